"""Serving the policy: the MLflow pyfunc and its logging, and the OpenAI-compatible proxy."""
