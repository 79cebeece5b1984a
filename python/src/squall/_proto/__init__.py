"""Protobuf classes generated from proto/squall.proto by python/scripts/gen_proto.py
(committed; do not edit squall_pb2.py or squall_pb2.pyi by hand)."""
