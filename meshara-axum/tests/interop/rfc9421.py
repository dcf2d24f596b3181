#!/usr/bin/env python3
"""RFC 9421 interoperability between meshara-axum and an independent implementation.

The other side is the `http-message-signatures` library from PyPI (with `cryptography` for
Ed25519 and `requests` for HTTP). meshara-axum/tests/rfc9421_interop.rs runs this script in
both directions:

    rfc9421.py sign URL SEED_HEX NODE_ID
        The library signs requests as the Ed25519 key with that seed (the Rust test's identity,
        whose NodeId is NODE_ID) and sends them to URL, a meshara-axum server whose /whoami
        and /echo routes take a `VerifiedPeer`. Each case says what the server must answer.

    rfc9421.py verify < cases.json
        Requests signed by meshara-axum's `sign_request` (method, url, headers, base64 body,
        and whether they must verify) are checked by the library's verifier, with the body
        against its Content-Digest.

Prints one line per case and exits 1 if any case is not as expected.
"""

import base64
import datetime
import json
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)


def node_key(node_id: str) -> Ed25519PublicKey:
    """The Ed25519 public key a NodeId (52 lowercase base32 characters) names."""
    raw = base64.b32decode(node_id.upper() + "=" * (-len(node_id) % 8))
    return Ed25519PublicKey.from_public_bytes(raw)


class Sha512Digest(ContentDigest):
    algorithm = "sha-512"


def sign_cases(url: str, seed: bytes, node_id: str) -> int:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    resolver = MappingKeyResolver(public_keys={}, private_keys={node_id: key, "proxy": b"a shared proxy secret"})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    hmac_signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)
    session = requests.Session()
    failures = 0

    def check(case: str, request: requests.PreparedRequest, status: int, expect_body: str | None = None,
              code: str | None = None) -> requests.Response:
        nonlocal failures
        response = session.send(request, timeout=10)
        ok = response.status_code == status
        if ok and expect_body is not None:
            ok = response.text == expect_body
        if ok and code is not None:
            ok = response.json().get("error") == code
        print(f"{'ok' if ok else 'FAILED'} sign/{case}: {response.status_code} {response.text[:300]}")
        failures += not ok
        return response

    def get(path: str) -> requests.PreparedRequest:
        return requests.Request("GET", url + path).prepare()

    def post(path: str, body: bytes) -> requests.PreparedRequest:
        return requests.Request("POST", url + path, data=body, headers={"Content-Type": "text/plain"}).prepare()

    # The library's defaults: @method @authority @target-uri, created, alg, no nonce.
    r = get("/whoami")
    signer.sign(r, key_id=node_id)
    check("defaults", r, 200, node_id)
    # Without a nonce the signature is its own replay key: the same request again is a replay.
    again = get("/whoami")
    again.headers.update({k: r.headers[k] for k in ("Signature-Input", "Signature")})
    check("defaults replayed", again, 401, code="replayed_signature")

    r = get("/whoami?page=2&q=a%20b")
    signer.sign(r, key_id=node_id, nonce="n-1", covered_component_ids=("@method", "@path", "@query", "@authority"))
    check("path, query and a nonce", r, 200, node_id)

    r = get("/whoami?x=1")
    signer.sign(r, key_id=node_id, nonce="n-2",
                covered_component_ids=("@method", "@scheme", "@authority", "@request-target"))
    check("scheme and request-target", r, 200, node_id)

    r = post("/echo", b"signed body")
    signer.sign(r, key_id=node_id, body=b"signed body")  # adds and covers a sha-256 Content-Digest
    check("sha-256 content digest", r, 200, f"{node_id}:signed body")

    r = post("/echo", b"digest by sha-512")
    r.headers["Content-Digest"] = Sha512Digest.create(b"digest by sha-512")
    signer.sign(r, key_id=node_id, nonce="n-3", use_existing_digest=True,
                covered_component_ids=("@method", "@target-uri", "content-digest"))
    check("sha-512 content digest", r, 200, f"{node_id}:digest by sha-512")

    # A proxy's HMAC signature first, the caller's Ed25519 signature second.
    r = get("/whoami")
    hmac_signer.sign(r, key_id="proxy", label="proxy", nonce="p-1")
    signer.sign(r, key_id=node_id, label="caller", nonce="n-4", append_if_signature_exists=True)
    check("the right one of two signatures", r, 200, node_id)

    # What must be refused.
    r = get("/whoami")
    signer.sign(r, key_id=node_id, nonce="n-5", covered_component_ids=("@authority",))
    check("method and target not covered", r, 401, code="signature_incomplete")

    r = post("/echo", b"original")
    signer.sign(r, key_id=node_id, nonce="n-6", body=b"original")
    r.body = b"tampered"
    r.headers["Content-Length"] = str(len(r.body))
    check("body changed after signing", r, 400, code="digest_mismatch")

    r = get("/whoami")
    signer.sign(r, key_id=node_id, nonce="n-7",
                created=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    check("an hour old", r, 401, code="expired_signature")

    r = get("/whoami")
    signer.sign(r, key_id=node_id, nonce="n-8")
    r.url = url + "/whoami?admin=1"
    check("query added after signing", r, 401)
    return failures


def verify_cases() -> int:
    failures = 0
    for case in json.load(sys.stdin):
        resolver = MappingKeyResolver(public_keys={case["node_id"]: node_key(case["node_id"])}, private_keys={})
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
        body = base64.b64decode(case["body"])
        request = requests.Request(case["method"], case["url"], headers=case["headers"], data=body or None).prepare()
        try:
            results = verifier.verify(request, max_age=datetime.timedelta(minutes=5), body=body,
                                      require_components=("@method", "@path"))
            verified = len(results) == 1 and results[0].parameters.get("keyid") == case["node_id"]
            detail = f"covers {[str(c) for c in results[0].covered_components]}" if results else "no result"
        except InvalidSignature as e:
            verified, detail = False, f"refused: {e}"
        ok = verified == case["valid"]
        print(f"{'ok' if ok else 'FAILED'} verify/{case['name']}: {detail}")
        failures += not ok
    return failures


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "sign":
        failures = sign_cases(sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 2 and sys.argv[1] == "verify":
        failures = verify_cases()
    else:
        sys.exit(__doc__)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
