"""Presentation contexts: CT in every transfer syntax we can decode, other storage accepted.

PACS route whole studies; refusing the dose report or a scout would make the
whole transfer fail, so every storage SOP class is accepted (and then discarded
unless it is CT). For CT we accept only transfer syntaxes a decoder is installed
for, so an accepted CT can always be turned into pixels by the worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext

from listener.ingest import CT_SOP_CLASSES
from listener.pynetdicom_internals import CheapCopyContext

VERIFICATION = UID("1.2.840.10008.1.1")
"""Verification SOP Class (C-ECHO); pynetdicom generates its sop_class names at run time."""

_NATIVE = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


def decodable_transfer_syntaxes() -> list[UID]:
    found = []
    for syntax in AllTransferSyntaxes:
        if syntax in _NATIVE:
            found.append(syntax)
            continue
        try:
            if get_decoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:
            continue
    return found


def _shared(abstract_syntax: str, transfer_syntaxes: Sequence[str]) -> CheapCopyContext:
    built = build_context(abstract_syntax, list[str | UID](transfer_syntaxes))
    context = CheapCopyContext()
    context.abstract_syntax = built.abstract_syntax
    context.transfer_syntax = list(built.transfer_syntax)
    return context


def supported_contexts() -> list[PresentationContext]:
    ct_syntaxes = decodable_transfer_syntaxes()
    every_syntax = [s for s in AllTransferSyntaxes if s not in _NATIVE]
    contexts: list[PresentationContext] = [
        _shared(VERIFICATION, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ]
    seen = set()
    for context in AllStoragePresentationContexts:
        uid = context.abstract_syntax
        assert uid is not None
        seen.add(uid)
        syntaxes = ct_syntaxes if uid in CT_SOP_CLASSES else [*_NATIVE, *every_syntax]
        contexts.append(_shared(uid, syntaxes))
    for uid in CT_SOP_CLASSES - seen:
        contexts.append(_shared(uid, ct_syntaxes))
    return contexts
