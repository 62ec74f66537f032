"""Generated gRPC code of serving/proto (do not edit; `make proto`)."""
