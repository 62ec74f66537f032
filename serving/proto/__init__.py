"""The gRPC API: `reasonrec/v1/recommend.proto` and its generated Python code in `gen/`."""
