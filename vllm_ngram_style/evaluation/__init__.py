"""The paper's evaluation: metrics, the strength x mode sweep through vLLM, and reports."""
