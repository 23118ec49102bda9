#!/usr/bin/env python3
"""Tessera from Python: tokenize a card, read the token's facts, detokenize it.

From the repository root, with a dev server running (`cargo run --release -- serve --dev`):

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/tessera_example.py \\
        --credentials tessera-data/dev-credentials.json

The stubs are generated from proto/ into a temporary directory on each run (grpcio-tools takes
a tenth of a second), so they always match the server's contract. A point-of-sale principal
(`pos`) tokenizes and a processor (`processor`) detokenizes, each with its own API key sent as
`authorization: Bearer KEY`. The example never prints the card number: it only says whether the
detokenized PAN matches what it sent.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import uuid
from importlib.resources import files

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEST_CARD = "4111111111111111"  # a well-known test PAN, never a real card


def generate_stubs(proto_dir):
    """Compiles tessera/v1/*.proto into a temporary package directory and imports it."""
    out = tempfile.mkdtemp(prefix="tessera-stubs-")
    well_known = str(files("grpc_tools") / "_proto")
    protos = [
        os.path.join("tessera", "v1", name)
        for name in sorted(os.listdir(os.path.join(proto_dir, "tessera", "v1")))
        if name.endswith(".proto")
    ] + [os.path.join("google", "rpc", "status.proto")]
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + protos) != 0:
        sys.exit("could not generate stubs from " + proto_dir)
    sys.path.insert(0, out)
    return (
        importlib.import_module("tessera.v1.tokenizer_pb2"),
        importlib.import_module("tessera.v1.tokenizer_pb2_grpc"),
    )


def channel(addr, ca_file):
    """Plaintext on loopback (serve --dev); TLS verified against ca_file otherwise."""
    if ca_file is None:
        return grpc.insecure_channel(addr)
    with open(ca_file, "rb") as f:
        return grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=f.read()))


def call_metadata(api_key):
    """Credentials and a request id the server logs and returns, for tracing one call."""
    return (("authorization", f"Bearer {api_key}"), ("x-request-id", str(uuid.uuid4())))


def list_services(ch):
    """The services the server describes through gRPC reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for response in stub.ServerReflectionInfo(iter([request])):
        return sorted(s.name for s in response.list_services_response.service)
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("TESSERA_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--ca-file", help="CA of the server's certificate (TLS); plaintext without")
    parser.add_argument("--credentials", help="a dev server's dev-credentials.json")
    parser.add_argument("--pos-key", default=os.environ.get("TESSERA_POS_KEY"))
    parser.add_argument("--processor-key", default=os.environ.get("TESSERA_PROCESSOR_KEY"))
    parser.add_argument("--proto-dir", default=os.path.join(REPO, "proto"))
    args = parser.parse_args()
    if args.credentials:
        with open(args.credentials) as f:
            creds = json.load(f)
        args.pos_key = args.pos_key or creds["pos"]["api_key"]
        args.processor_key = args.processor_key or creds["processor"]["api_key"]
    if not (args.pos_key and args.processor_key):
        sys.exit("give --credentials, or --pos-key and --processor-key")

    pb, pb_grpc = generate_stubs(args.proto_dir)
    ch = channel(args.addr, args.ca_file)
    print("services:", ", ".join(list_services(ch)))
    tokenizer = pb_grpc.TokenizerStub(ch)
    try:
        made = tokenizer.Tokenize(
            pb.TokenizeRequest(pan=TEST_CARD, metadata={"order": "example-1"}),
            metadata=call_metadata(args.pos_key),
            timeout=10,
        )
        print("token:", made.token)
        info = tokenizer.GetTokenInfo(
            pb.GetTokenInfoRequest(token=made.token),
            metadata=call_metadata(args.processor_key),
            timeout=10,
        )
        print("masked pan:", info.masked_pan, "brand:", pb.CardBrand.Name(info.brand))
        back = tokenizer.Detokenize(
            pb.DetokenizeRequest(token=made.token),
            metadata=call_metadata(args.processor_key),
            timeout=10,
        )
    except grpc.RpcError as e:
        sys.exit(f"call failed: {e.code().name}: {e.details()}")
    if back.pan != TEST_CARD:
        sys.exit("detokenized PAN does not match")
    print("detokenized: matches the card sent")
    # Least privilege: the POS key may tokenize but never detokenize.
    try:
        tokenizer.Detokenize(
            pb.DetokenizeRequest(token=made.token), metadata=call_metadata(args.pos_key), timeout=10
        )
        sys.exit("the POS key detokenized: check its roles")
    except grpc.RpcError as e:
        print("pos detokenize refused:", e.code().name)


if __name__ == "__main__":
    main()
