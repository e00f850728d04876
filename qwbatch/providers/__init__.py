"""Image providers: the protocol the engine calls, and the DashScope HTTP client."""
