"""Native conformance adapters: each native masking/attention path held against the oracle."""
