"""Key derivation: HKDF as RFC 5869 defines it (the sealed session ids and the console cookies rely on it)."""

from __future__ import annotations

from mcp_barbican.keys import hkdf


def test_hkdf_matches_rfc_5869_test_case_3() -> None:
    okm = hkdf(b"\x0b" * 22, b"", 42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
