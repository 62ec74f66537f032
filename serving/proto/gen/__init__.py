"""Generated code of serving/proto (do not edit; regenerate with `make proto`).

protoc runs with the virtual import root `serving/proto/gen=serving/proto`, so the generated
stubs import their siblings as `serving.proto.gen.reasonrec.v1...` (not a top-level
`reasonrec` package, which does not exist)."""
