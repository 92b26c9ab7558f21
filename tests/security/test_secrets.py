"""Secret shapes redacted from tool results: each kind, and what must stay untouched."""

from __future__ import annotations

import pytest

from mcp_barbican.security.scanner import redact_secrets

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nabc+/=\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id AKIAIOSFODNN7EXAMPLE.", "id [REDACTED:aws-access-key]."),
        ("ASIAY34FZKBOKMUTVV7A", "[REDACTED:aws-access-key]"),
        (f"AKIAIOSFODNN7EXAMPLE {AWS_SECRET}", "[REDACTED:aws-access-key] [REDACTED:aws-secret-key]"),
        (f"aws_secret_access_key={AWS_SECRET}", "[REDACTED:aws-secret-key]"),
        ("t=ghp_" + "a1B2" * 9, "t=[REDACTED:github-token]"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "[REDACTED:github-token]"),
        ("xoxb-1234567890-abcdefghij", "[REDACTED:slack-token]"),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "[REDACTED:stripe-key]"),
        ("AIza" + "SyA-abcdefghijklmnopqrstuvwxyz01234", "[REDACTED:google-api-key]"),
        (f"key:\n{PEM}\nend", "key:\n[REDACTED:private-key]\nend"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.SflKxwRJSMeKKF2QT4fwpM", "[REDACTED:jwt]"),
        ("postgres://app:hunter2pass@db:5432/x", "postgres://app:[REDACTED:url-password]@db:5432/x"),
    ],
)
def test_each_secret_shape_is_replaced_by_its_marker(text: str, expected: str) -> None:
    result = {"content": [{"type": "text", "text": text}]}
    _, findings = redact_secrets(result)
    assert result["content"][0]["text"] == expected
    assert findings and all(f.rule.startswith("secret.") for f in findings)


@pytest.mark.parametrize(
    "text",
    [
        "Reads the file at path.",
        "AKIA is the prefix AWS uses for access key ids.",
        "A 40 character hash: 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc is Stripe's published test key",
        "https://example.com/docs?page=2 and user@example.com",
        "eyJ is how a JWT starts",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    result = {"content": [{"type": "text", "text": text}]}
    _, findings = redact_secrets(result)
    assert result["content"][0]["text"] == text
    assert findings == []


def test_a_secret_split_across_items_is_redacted_in_each_and_other_items_are_kept() -> None:
    result = {
        "content": [
            {"type": "text", "text": "first ghp_" + "a1B2" * 4},
            {"type": "text", "text": "a1B2" * 5 + " second"},
            {"type": "image", "data": "AKIAIOSFODNN7EXAMPLE", "mimeType": "image/png"},
            {"type": "text", "text": "clean"},
        ]
    }
    _, findings = redact_secrets(result)
    texts = [item.get("text") for item in result["content"]]
    assert texts == ["first [REDACTED:github-token]", " second", None, "clean"]
    assert result["content"][2]["data"] == "AKIAIOSFODNN7EXAMPLE"  # not text: a client does not show it as text
    assert [f.where for f in findings] == ["content[0].text"]
