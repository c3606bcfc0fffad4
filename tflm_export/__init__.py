"""tflm_export: Keras model -> int8 TFLite flatbuffer with sub-byte weights, firmware sources, TFLM emulation."""
