"""C2SP signed notes and tlog checkpoints (signed tree heads), Ed25519 only.

Formats (specs/04-log.md repeats them normatively):

* **signed note** (c2sp.org/signed-note, Go ``golang.org/x/mod/sumdb/note``): a UTF-8 text
  ending in ``"\\n"``, a blank line, then one or more signature lines
  ``"\\u2014 <key name> <base64(key ID[4] || signature)>\\n"``.
* **key ID** (Ed25519): the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``.
* **verifier key** ``<name>+<hex8 key ID>+<base64(0x01 || 32-byte public key)>`` and **signer key**
  ``PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 || 32-byte seed)>`` -- the strings Go's
  ``note.NewVerifier`` / ``note.NewSigner`` accept.
* **checkpoint** (c2sp.org/tlog-checkpoint): note text ``<origin>\\n<size>\\n<base64 root>\\n``
  followed by optional extension lines. verifiable-mu defines one extension line,
  ``timestamp <unix seconds>``, which if present is the first extension line.

:func:`open_note` follows the C2SP rules and the Go implementation, with these exact decisions:

1. An empty verifier list is refused (:class:`SignatureFailed`): a note is never "opened" without
   a trusted key (fail closed). Two verifiers with the same name and key ID but different keys
   are refused (:class:`MalformedKey`, "ambiguous").
2. Syntax (any violation is :class:`MalformedNote`): the note is at most :data:`MAX_NOTE_BYTES`
   bytes of valid UTF-8 without control characters other than newline; it is split at its last
   blank line; the signature block is non-empty, ends in a newline, and every line in it is a
   well-formed signature line (em dash, space, valid key name, space, *canonical* standard base64
   of at least 5 bytes); at most :data:`MAX_SIGNATURES` (100, as Go) signature lines.
3. A signature whose (name, key ID) pair matches no trusted key is ignored (kept in
   ``Note.unverified``), even if it shares the name *or* the key ID with a trusted key.
4. A signature whose (name, key ID) matches a trusted key must verify; otherwise the whole note is
   refused with :class:`SignatureFailed` -- even when another trusted key did sign. (Go skips a
   second signature line for the same key; here every distinct line from a trusted key is
   checked, and byte-identical repeated lines are counted once.)
5. At least one trusted key must have signed, else :class:`SignatureFailed`.

The code is in three parts: keys (:mod:`verifiable_mu._note_keys`), signing and opening notes
(:mod:`verifiable_mu._signed_note`), and checkpoints (:mod:`verifiable_mu._checkpoint`). Every name
is re-exported from this module.
"""

from __future__ import annotations

from ._checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ._note_keys import ALG_ED25519, NoteSigner, NoteVerifier, ed25519_verifies, is_valid_key_name, key_id
from ._signed_note import MAX_NOTE_BYTES, MAX_SIGNATURES, Note, NoteSignature, open_note, sign_note

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "MAX_NOTE_BYTES",
    "key_id",
    "ed25519_verifies",
    "is_valid_key_name",
    "NoteSigner",
    "NoteVerifier",
    "NoteSignature",
    "Note",
    "sign_note",
    "open_note",
    "Checkpoint",
    "sign_checkpoint",
    "open_checkpoint",
]
