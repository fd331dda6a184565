"""Domain-separation tags: one per kind of thing that is ever hashed or signed.

Every SHA-256 that verifiable-mu takes, other than the RFC 9162 Merkle node/leaf hashes
(which use the RFC's own 0x00/0x01 prefixes), starts with one of these tags, so a digest of
one kind can never be passed off as a digest of another. The tags are ASCII, end in a NUL
byte (so no tag is a prefix of another tag followed by data), and carry a version.

The list is normative: specs/00-hashing.md repeats it and a test checks the two agree.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "TAG_RECORD_COMMITMENT",
    "TAG_RECORD_KEY",
    "TAG_RECORD_LEAF",
    "TAG_SLICE_LEAF",
    "TAG_LOG_ENTRY",
    "TAG_CHECKPOINT",
    "TAG_MODEL",
    "TAG_KEY_ID",
    "TAG_ASSIGNMENT",
    "TAG_STEP_SEED",
    "TAG_CHALLENGE",
    "TAG_TRANSCRIPT",
    "TAG_REQUEST",
    "TAG_MODEL_SOURCE",
    "TAG_MODEL_STRUCTURE",
    "ALL_TAGS",
    "tagged_hash",
]

TAG_RECORD_COMMITMENT = b"vmu:record-commitment:v1\x00"
TAG_RECORD_KEY = b"vmu:record-key:v1\x00"
TAG_RECORD_LEAF = b"vmu:record-leaf:v1\x00"
TAG_SLICE_LEAF = b"vmu:slice-leaf:v1\x00"
TAG_LOG_ENTRY = b"vmu:log-entry:v1\x00"
TAG_CHECKPOINT = b"vmu:checkpoint:v1\x00"
TAG_MODEL = b"vmu:model:v1\x00"
TAG_KEY_ID = b"vmu:ed25519-key-id:v1\x00"
TAG_ASSIGNMENT = b"vmu:assignment:v1\x00"
TAG_STEP_SEED = b"vmu:step-seed:v1\x00"
TAG_CHALLENGE = b"vmu:challenge:v1\x00"
TAG_TRANSCRIPT = b"vmu:transcript:v1\x00"
TAG_REQUEST = b"vmu:deletion-request:v1\x00"
TAG_MODEL_SOURCE = b"vmu:model-source:v1\x00"
TAG_MODEL_STRUCTURE = b"vmu:model-structure:v1\x00"

ALL_TAGS: tuple[bytes, ...] = (
    TAG_RECORD_COMMITMENT,
    TAG_RECORD_KEY,
    TAG_RECORD_LEAF,
    TAG_SLICE_LEAF,
    TAG_LOG_ENTRY,
    TAG_CHECKPOINT,
    TAG_MODEL,
    TAG_KEY_ID,
    TAG_ASSIGNMENT,
    TAG_STEP_SEED,
    TAG_CHALLENGE,
    TAG_TRANSCRIPT,
    TAG_REQUEST,
    TAG_MODEL_SOURCE,
    TAG_MODEL_STRUCTURE,
)


def tagged_hash(tag: bytes, *parts: bytes) -> bytes:
    """Return ``SHA-256(tag || part_1 || ... || part_n)``.

    ``tag`` must be one of :data:`ALL_TAGS`; callers are responsible for making the parts
    self-delimiting (fixed length, or length-prefixed).
    """
    if tag not in ALL_TAGS:
        raise ValueError(f"unknown domain-separation tag {tag!r}")
    h = hashlib.sha256(tag)
    for p in parts:
        h.update(p)
    return h.digest()
