"""qwbatch benchmarks: every figure a ratio measured side by side in one run."""
