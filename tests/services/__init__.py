"""Real local servers for the test suite: S3 (moto), MLflow, Kubernetes (kmock), Ray.

Each server is a real process listening on 127.0.0.1 on a free port. Code under test
reaches it only through the configuration a user would give in production
(`AWS_ENDPOINT_URL`, `MLFLOW_TRACKING_URI`, `KUBECONFIG`, `ray.init(address=...)`),
so nothing in `sphinxx` knows it is being tested.
"""
