"""verifiable-mu's trusted core, shared by the prover and the independent verifier.

Canonical encodings and record commitments, RFC 9162 Merkle trees with inclusion, consistency
and (sorted-tree) non-membership proofs, the SQLite transparency log with C2SP signed tree
heads, Ed25519 keys and DSSE/in-toto statements. Importing this package never imports torch;
the deterministic training step lives in :mod:`verifiable_mu.training`, imported on demand.

The formats are specified in specs/ (normative).
"""

from ._canary import Trigger, apply_trigger, mark_with_trigger
from ._canonical import canonical_json, parse_json_strict
from ._dsse import (
    IN_TOTO_PAYLOAD_TYPE,
    Envelope,
    EnvelopeSignature,
    make_statement,
    pae,
    sign_envelope,
    sign_statement,
    verify_envelope,
    verify_statement,
)
from ._errors import (
    CommitmentMismatch,
    ConsistencyProofFailed,
    EntryKindMismatch,
    InclusionProofFailed,
    InvalidBundle,
    LogCorrupted,
    LogError,
    MalformedEnvelope,
    MalformedInput,
    MalformedKey,
    MalformedNote,
    MalformedProof,
    MalformedRecord,
    NonMembershipProofFailed,
    SignatureFailed,
    UnsupportedVersion,
    VerificationFailed,
    VmuError,
)
from ._keys import SigningKey, VerifyingKey, key_id_of
from ._log import LogEntry, SignedTreeHead, TransparencyLog, entry_leaf_hash
from ._merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from ._note import Checkpoint, NoteSigner, NoteVerifier, open_checkpoint, open_note, sign_checkpoint, sign_note
from ._proofs import ConsistencyProof, InclusionProof
from ._records import RecordOpening, commit_record, commit_records, encode_record, new_salt_array, record_key
from ._sorted_tree import (
    MembershipProof,
    NonMembershipProof,
    SliceDescriptor,
    SortedTree,
    dataset_root,
    verify_membership,
    verify_non_membership,
)
from ._tags import tagged_hash

__version__ = "0.1.0"

__all__ = [
    # errors
    "VmuError",
    "MalformedInput",
    "MalformedProof",
    "MalformedRecord",
    "MalformedNote",
    "MalformedEnvelope",
    "MalformedKey",
    "UnsupportedVersion",
    "InvalidBundle",
    "VerificationFailed",
    "InclusionProofFailed",
    "ConsistencyProofFailed",
    "NonMembershipProofFailed",
    "SignatureFailed",
    "CommitmentMismatch",
    "EntryKindMismatch",
    "LogError",
    "LogCorrupted",
    # encodings and commitments
    "canonical_json",
    "parse_json_strict",
    "tagged_hash",
    "encode_record",
    "record_key",
    "commit_record",
    "commit_records",
    "new_salt_array",
    "RecordOpening",
    # Merkle trees and proofs
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "root_of",
    "MerkleTree",
    "verify_inclusion",
    "verify_consistency",
    "InclusionProof",
    "ConsistencyProof",
    "SortedTree",
    "MembershipProof",
    "NonMembershipProof",
    "verify_membership",
    "verify_non_membership",
    "SliceDescriptor",
    "dataset_root",
    # log and signed tree heads
    "TransparencyLog",
    "LogEntry",
    "SignedTreeHead",
    "entry_leaf_hash",
    "Checkpoint",
    "NoteSigner",
    "NoteVerifier",
    "sign_note",
    "open_note",
    "sign_checkpoint",
    "open_checkpoint",
    # keys and statements
    "SigningKey",
    "VerifyingKey",
    "key_id_of",
    "pae",
    "Envelope",
    "EnvelopeSignature",
    "sign_envelope",
    "verify_envelope",
    "make_statement",
    "sign_statement",
    "verify_statement",
    "IN_TOTO_PAYLOAD_TYPE",
    # backdoor canaries (for data subjects)
    "Trigger",
    "apply_trigger",
    "mark_with_trigger",
    "__version__",
]
