"""What an operator scrapes and reads: Prometheus metrics (`GET /metrics`) and structured logs."""
