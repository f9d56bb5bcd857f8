"""Presentation contexts: CT in every transfer syntax we can decode, other storage accepted.

PACS route whole studies; refusing the dose report or a scout would make the
whole transfer fail, so every storage SOP class is accepted (and then discarded
unless it is CT). For CT we accept only transfer syntaxes a decoder is installed
for, so an accepted CT can always be turned into pixels by the worker.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

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

VERIFICATION = UID("1.2.840.10008.1.1")
"""Verification SOP Class (C-ECHO); pynetdicom generates its sop_class names at run time."""

_NATIVE = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


class _SharedContext(PresentationContext):
    """A supported context that copies cheaply.

    pynetdicom deep-copies every supported context for every association; with
    all storage classes that costs tens of milliseconds per association. UIDs are
    immutable, so a shallow copy with its own transfer-syntax list is equivalent.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


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


def _shared(abstract_syntax: str, transfer_syntaxes: Sequence[str]) -> _SharedContext:
    built = build_context(abstract_syntax, list[str | UID](transfer_syntaxes))
    context = _SharedContext()
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
