#!/bin/sh
echo "bazel coverage needs the remote_coverage_tools download, which --config=offline replaces; run it with network, without --config=offline" >&2
exit 1
