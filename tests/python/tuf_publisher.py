#!/usr/bin/env python3
"""Independent TUF publisher built on python-tuf's Metadata API, for interop and attack tests.

It writes the same repository layout and target custom fields as `defect-central repo`, with its
own code and its own keys, so that the box-side client (tough) is tested against metadata that
our Rust publisher did not produce:

    <repo>/metadata/1.root.json, 2.root.json, ...   every root version (consistent_snapshot)
    <repo>/metadata/root.json                        copy of the newest root
    <repo>/metadata/timestamp.json                   unversioned
    <repo>/metadata/<N>.snapshot.json, <N>.targets.json
    <repo>/targets/<sha256hex>.<target-name>

Keys: ed25519, one PKCS#8 PEM file per key (mode 0600) in the keys folder: root-1.pem ...,
targets.pem, snapshot.pem, timestamp.pem; rotation adds root-4.pem, targets-2.pem, ... and never
deletes a key. A delegated targets role (`add-delegated-target`) has its own key,
delegated-<role>.pem, and its metadata in <repo>/metadata/<N>.<role>.json.

Unlike the ops publisher this one checks nothing about model versions: tests use it to publish
exactly what an attacker or a mistaken operator could. Every command prints one JSON object on
standard output (versions, key ids) and exits non-zero with a message on standard error when
it fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from securesystemslib.formats import encode_canonical
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    MetaFile,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
DAY = 24 * 3600
DEFAULT_EXPIRY = {"root": 365 * DAY, "targets": 90 * DAY, "snapshot": 7 * DAY, "timestamp": DAY}


class PublishError(Exception):
    """A command cannot be carried out; the message names the file, role or key involved."""


# ---------------------------------------------------------------------------------------------
# Files


def expires_in(seconds: int) -> datetime:
    """Now plus `seconds` (may be negative), in whole seconds, UTC."""
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=seconds)


def atomic_write(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_metadata(md: Metadata, path: Path) -> MetaFile:
    """Writes signed metadata (pretty JSON); returns its MetaFile entry with length and sha256."""
    data = md.to_bytes(JSONSerializer(compact=False))
    atomic_write(path, data)
    return MetaFile(
        version=md.signed.version,
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
    )


class Layout:
    """Where each file of a repository folder lives."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.metadata = repo / "metadata"
        self.targets = repo / "targets"

    def root(self, version: int) -> Path:
        return self.metadata / f"{version}.root.json"

    def root_copy(self) -> Path:
        return self.metadata / "root.json"

    def timestamp(self) -> Path:
        return self.metadata / "timestamp.json"

    def snapshot(self, version: int) -> Path:
        return self.metadata / f"{version}.snapshot.json"

    def targets_file(self, version: int) -> Path:
        return self.metadata / f"{version}.targets.json"

    def delegated_file(self, role: str, version: int) -> Path:
        return self.metadata / f"{version}.{role}.json"

    def newest_root_version(self) -> int:
        versions = []
        for p in self.metadata.glob("*.root.json"):
            head = p.name.split(".", 1)[0]
            if head.isdigit():
                versions.append(int(head))
        if not versions:
            raise PublishError(f"{self.metadata}: no N.root.json, not a repository")
        return max(versions)


def load(path: Path, role: str) -> Metadata:
    try:
        md = Metadata.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - report any parse problem with the file name
        raise PublishError(f"{path}: not valid {role} metadata: {e}") from e
    if md.signed.type != role:
        raise PublishError(f"{path}: holds {md.signed.type}, expected {role}")
    return md


class State:
    """The current metadata: newest root, timestamp, and the snapshot and targets it names."""

    def __init__(self, layout: Layout):
        self.root = load(layout.root(layout.newest_root_version()), "root")
        self.timestamp = load(layout.timestamp(), "timestamp")
        snapshot_version = self.timestamp.signed.snapshot_meta.version
        self.snapshot = load(layout.snapshot(snapshot_version), "snapshot")
        targets_meta = self.snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise PublishError(f"{layout.snapshot(snapshot_version)}: no targets.json entry")
        self.targets = load(layout.targets_file(targets_meta.version), "targets")


# ---------------------------------------------------------------------------------------------
# Keys


def key_file_name(role: str, n: int) -> str:
    if role != "root" and n == 1:
        return f"{role}.pem"
    return f"{role}-{n}.pem"


def next_key_path(keys: Path, role: str) -> Path:
    n = 1 if role == "root" else 2
    while (keys / key_file_name(role, n)).exists():
        n += 1
    return keys / key_file_name(role, n)


def generate_key(path: Path) -> CryptoSigner:
    """Generates an ed25519 key and writes it as PKCS#8 PEM, mode 0600, never overwriting."""
    signer = CryptoSigner.generate_ed25519()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise PublishError(f"{path}: key file already exists; refusing to overwrite") from e
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
        f.flush()
        os.fsync(f.fileno())
    return signer


def load_key(path: Path) -> CryptoSigner:
    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), None))
    except Exception as e:  # noqa: BLE001
        raise PublishError(f"{path}: not a PKCS#8 PEM private key: {e}") from e


def load_ring(keys: Path) -> dict[str, CryptoSigner]:
    """Every *.pem key of the keys folder, by key id."""
    if not keys.is_dir():
        raise PublishError(f"{keys}: no such keys folder")
    ring: dict[str, CryptoSigner] = {}
    for path in sorted(keys.glob("*.pem")):
        signer = load_key(path)
        ring.setdefault(signer.public_key.keyid, signer)
    return ring


def signers_for(
    root: Root,
    role: str,
    ring: dict[str, CryptoSigner],
    prefer: tuple[str, ...] = (),
    avoid: tuple[str, ...] = (),
) -> list[CryptoSigner]:
    """A threshold of the root's keys for `role` found in `ring`."""
    listed = root.roles[role].keyids
    ordered = sorted(listed, key=lambda k: 0 if k in prefer else (2 if k in avoid else 1))
    available = [ring[k] for k in ordered if k in ring]
    threshold = root.roles[role].threshold
    if len(available) < threshold:
        raise PublishError(
            f"{role}: threshold is {threshold} but only {len(available)} of its keys "
            f"({', '.join(listed)}) are available"
        )
    return available[:threshold]


def sign(md: Metadata, signers: list[CryptoSigner]) -> Metadata:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md


def role_key_ids(root: Root) -> dict[str, list[str]]:
    return {role: sorted(root.roles[role].keyids) for role in ROLES}


# ---------------------------------------------------------------------------------------------
# Publishing


def publish_chain(
    layout: Layout,
    state: State,
    ring: dict[str, CryptoSigner],
    targets: Targets | None,
    timestamp_expiry: int = DEFAULT_EXPIRY["timestamp"],
) -> dict[str, int]:
    """Writes targets N+1 (when given), snapshot N+1 and timestamp N+1, each signed by its role."""
    root = state.root.signed
    snapshot = state.snapshot.signed
    if targets is not None:
        targets.version = state.targets.signed.version + 1
        targets.expires = expires_in(DEFAULT_EXPIRY["targets"])
        targets_md = sign(Metadata(targets), signers_for(root, "targets", ring))
        snapshot.meta["targets.json"] = write_metadata(
            targets_md, layout.targets_file(targets.version)
        )
    snapshot.version += 1
    snapshot.expires = expires_in(DEFAULT_EXPIRY["snapshot"])
    snapshot_md = sign(Metadata(snapshot), signers_for(root, "snapshot", ring))
    snapshot_meta = write_metadata(snapshot_md, layout.snapshot(snapshot.version))
    timestamp = state.timestamp.signed
    timestamp.version += 1
    timestamp.expires = expires_in(timestamp_expiry)
    timestamp.snapshot_meta = snapshot_meta
    timestamp_md = sign(Metadata(timestamp), signers_for(root, "timestamp", ring))
    write_metadata(timestamp_md, layout.timestamp())
    return {
        "root": root.version,
        "targets": (targets or state.targets.signed).version,
        "snapshot": snapshot.version,
        "timestamp": timestamp.version,
    }


def write_root(layout: Layout, md: Metadata) -> None:
    write_metadata(md, layout.root(md.signed.version))
    write_metadata(md, layout.root_copy())


def cmd_init(args: argparse.Namespace) -> dict:
    layout = Layout(args.repo)
    for folder in (layout.metadata, layout.targets):
        if folder.exists() and any(folder.iterdir()):
            raise PublishError(f"{folder}: already holds repository files")
    if not 1 <= args.root_threshold <= args.root_keys:
        raise PublishError("--root-threshold must be between 1 and --root-keys")
    paths = [("root", args.keys / key_file_name("root", n)) for n in range(1, args.root_keys + 1)]
    paths += [(role, args.keys / key_file_name(role, 1)) for role in ROLES[1:]]
    for _, path in paths:
        if path.exists():
            raise PublishError(f"{path}: key file already exists; refusing to overwrite")
    signers = [(role, generate_key(path)) for role, path in paths]

    root = Root(expires=expires_in(DEFAULT_EXPIRY["root"]), consistent_snapshot=True)
    for role, signer in signers:
        root.add_key(signer.public_key, role)
    root.roles["root"].threshold = args.root_threshold
    by_role = {role: [s for r, s in signers if r == role] for role in ROLES}

    layout.metadata.mkdir(parents=True, exist_ok=True)
    layout.targets.mkdir(parents=True, exist_ok=True)
    write_root(layout, sign(Metadata(root), by_role["root"]))
    targets = Targets(expires=expires_in(DEFAULT_EXPIRY["targets"]))
    targets_meta = write_metadata(
        sign(Metadata(targets), by_role["targets"]), layout.targets_file(1)
    )
    snapshot = Snapshot(
        expires=expires_in(DEFAULT_EXPIRY["snapshot"]), meta={"targets.json": targets_meta}
    )
    snapshot_meta = write_metadata(
        sign(Metadata(snapshot), by_role["snapshot"]), layout.snapshot(1)
    )
    timestamp = Timestamp(
        expires=expires_in(DEFAULT_EXPIRY["timestamp"]), snapshot_meta=snapshot_meta
    )
    write_metadata(sign(Metadata(timestamp), by_role["timestamp"]), layout.timestamp())
    return {"key_ids": role_key_ids(root), "versions": {role: 1 for role in ROLES}}


def split_list(text: str | None) -> list[str]:
    if not text:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_add_target(args: argparse.Namespace) -> dict:
    if "/" in args.name or not args.name or args.name.startswith("."):
        raise PublishError(f"target name {args.name!r}: must be flat, no '/'")
    layout = Layout(args.repo)
    state = State(layout)
    ring = load_ring(args.keys)
    data = args.bundle.read_bytes()
    target = TargetFile.from_data(args.name, data, ["sha256"])
    target.unrecognized_fields["custom"] = {
        "model": args.model,
        "model_version": args.model_version,
        "version": args.version,
        "stations": split_list(args.stations),
        "lines": split_list(args.lines),
    }
    sha256 = target.hashes["sha256"]
    layout.targets.mkdir(parents=True, exist_ok=True)
    target_path = layout.targets / f"{sha256}.{args.name}"
    if not target_path.exists():
        atomic_write(target_path, data)
    targets = state.targets.signed
    targets.targets[args.name] = target
    versions = publish_chain(layout, state, ring, targets)
    return {"name": args.name, "sha256": sha256, "length": len(data), "versions": versions}


def cmd_add_delegated_target(args: argparse.Namespace) -> dict:
    """Publishes a file as a target of a delegated targets role, signed by the role's own key
    (delegated-<role>.pem, made on first use). The first time, targets N+1 delegates `--paths`
    to the role; the role's metadata N+1 is listed in snapshot N+1, then timestamp N+1."""
    if "/" in args.name or not args.name or args.name.startswith("."):
        raise PublishError(f"target name {args.name!r}: must be flat, no '/'")
    if not args.role or "/" in args.role or args.role in ROLES:
        raise PublishError(f"role name {args.role!r}: must be flat and not a top-level role")
    layout = Layout(args.repo)
    state = State(layout)
    ring = load_ring(args.keys)
    targets = state.targets.signed
    delegations = targets.delegations
    if delegations is None or delegations.roles is None:
        delegations = Delegations(keys={}, roles={})
    changed_targets = None
    role = delegations.roles.get(args.role)
    if role is None:
        signer = generate_key(args.keys / f"delegated-{args.role}.pem")
        ring[signer.public_key.keyid] = signer
        delegations.keys[signer.public_key.keyid] = signer.public_key
        role = DelegatedRole(
            name=args.role,
            keyids=[signer.public_key.keyid],
            threshold=1,
            terminating=True,
            paths=split_list(args.paths) or [args.name],
        )
        delegations.roles[args.role] = role
        targets.delegations = delegations
        changed_targets = targets
    signers = [ring[k] for k in role.keyids if k in ring][: role.threshold]
    if len(signers) < role.threshold:
        raise PublishError(f"{args.role}: no key of the delegated role in {args.keys}")

    listed = state.snapshot.signed.meta.get(f"{args.role}.json")
    if listed is None:
        delegated = Targets(expires=expires_in(DEFAULT_EXPIRY["targets"]))
    else:
        delegated = load(layout.delegated_file(args.role, listed.version), "targets").signed
        delegated.version = listed.version + 1
    data = args.bundle.read_bytes()
    target = TargetFile.from_data(args.name, data, ["sha256"])
    target.unrecognized_fields["custom"] = {
        "model": args.model,
        "model_version": args.model_version,
        "version": args.version,
        "stations": [],
        "lines": [],
    }
    sha256 = target.hashes["sha256"]
    layout.targets.mkdir(parents=True, exist_ok=True)
    target_path = layout.targets / f"{sha256}.{args.name}"
    if not target_path.exists():
        atomic_write(target_path, data)
    delegated.targets[args.name] = target
    delegated.expires = expires_in(DEFAULT_EXPIRY["targets"])
    state.snapshot.signed.meta[f"{args.role}.json"] = write_metadata(
        sign(Metadata(delegated), signers), layout.delegated_file(args.role, delegated.version)
    )
    versions = publish_chain(layout, state, ring, changed_targets)
    versions[args.role] = delegated.version
    return {
        "role": args.role,
        "paths": list(role.paths or []),
        "key_ids": list(role.keyids),
        "name": args.name,
        "sha256": sha256,
        "length": len(data),
        "versions": versions,
    }


def cmd_drop_delegated_role(args: argparse.Namespace) -> dict:
    """Snapshot N+1 without the delegated role's metadata, targets.json unchanged (it still
    delegates), then timestamp N+1: what a TUF client must refuse (TUF 5.5.5)."""
    layout = Layout(args.repo)
    state = State(layout)
    ring = load_ring(args.keys)
    if state.snapshot.signed.meta.pop(f"{args.role}.json", None) is None:
        raise PublishError(f"snapshot does not list {args.role}.json")
    versions = publish_chain(layout, state, ring, None)
    return {"role": args.role, "versions": versions}


def cmd_resign_timestamp(args: argparse.Namespace) -> dict:
    layout = Layout(args.repo)
    state = State(layout)
    ring = load_ring(args.keys)
    snapshot_path = layout.snapshot(state.snapshot.signed.version)
    data = snapshot_path.read_bytes()
    timestamp = state.timestamp.signed
    timestamp.version = args.version if args.version is not None else timestamp.version + 1
    timestamp.expires = expires_in(args.expires_seconds)
    timestamp.snapshot_meta = MetaFile(
        version=state.snapshot.signed.version,
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
    )
    signers = signers_for(state.root.signed, "timestamp", ring)
    write_metadata(sign(Metadata(timestamp), signers), layout.timestamp())
    return {"versions": {"timestamp": timestamp.version}, "expires": timestamp.expires.isoformat()}


def cmd_rotate_root_key(args: argparse.Namespace) -> dict:
    layout = Layout(args.repo)
    old = load(layout.root(layout.newest_root_version()), "root")
    ring = load_ring(args.keys)
    listed = old.signed.roles["root"].keyids
    revoked = args.revoke or listed[0]
    if revoked not in listed:
        raise PublishError(f"root: {revoked} is not one of the root keys ({', '.join(listed)})")
    old_signers = signers_for(old.signed, "root", ring, avoid=(revoked,))
    new_signer = generate_key(next_key_path(args.keys, "root"))
    ring[new_signer.public_key.keyid] = new_signer

    root = Metadata.from_bytes(old.to_bytes()).signed
    root.version += 1
    root.expires = expires_in(DEFAULT_EXPIRY["root"])
    root.revoke_key(revoked, "root")
    root.add_key(new_signer.public_key, "root")
    new_signers = signers_for(root, "root", ring, prefer=(new_signer.public_key.keyid,))
    signers = list({s.public_key.keyid: s for s in old_signers + new_signers}.values())
    write_root(layout, sign(Metadata(root), signers))
    return {
        "revoked": revoked,
        "new_key_id": new_signer.public_key.keyid,
        "key_ids": role_key_ids(root),
        "versions": {"root": root.version},
    }


def cmd_rotate_key(args: argparse.Namespace) -> dict:
    """Replaces the key of an online role (targets, snapshot or timestamp) with a new one in
    root N+1, signed by a threshold of the root keys, then re-signs targets, snapshot and
    timestamp N+1 with the new keys. The revoked key file stays in the keys folder."""
    layout = Layout(args.repo)
    ring = load_ring(args.keys)
    old = load(layout.root(layout.newest_root_version()), "root")
    role = args.role
    new_signer = generate_key(next_key_path(args.keys, role))
    ring[new_signer.public_key.keyid] = new_signer
    root = Metadata.from_bytes(old.to_bytes()).signed
    root.version += 1
    root.expires = expires_in(DEFAULT_EXPIRY["root"])
    revoked = list(root.roles[role].keyids)
    for keyid in revoked:
        root.revoke_key(keyid, role)
    root.add_key(new_signer.public_key, role)
    write_root(layout, sign(Metadata(root), signers_for(old.signed, "root", ring)))
    state = State(layout)
    versions = publish_chain(layout, state, ring, state.targets.signed)
    return {
        "revoked": revoked,
        "new_key_id": new_signer.public_key.keyid,
        "key_ids": role_key_ids(root),
        "versions": versions,
    }


def cmd_sign_root_below_threshold(args: argparse.Namespace) -> dict:
    layout = Layout(args.repo)
    old = load(layout.root(layout.newest_root_version()), "root")
    ring = load_ring(args.keys)
    root = Metadata.from_bytes(old.to_bytes()).signed
    root.version += 1
    root.expires = expires_in(DEFAULT_EXPIRY["root"])
    result: dict = {}
    if args.replace_role:
        role = args.replace_role
        forged = generate_key(args.keys / f"forged-{role}.pem")
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(forged.public_key, role)
        result["forged_key_id"] = forged.public_key.keyid
    one = [ring[k] for k in old.signed.roles["root"].keyids if k in ring][:1]
    if not one:
        raise PublishError(f"{args.keys}: no root key of root version {old.signed.version}")
    write_root(layout, sign(Metadata(root), one))
    result["versions"] = {"root": root.version}
    result["signed_by"] = [one[0].public_key.keyid]
    return result


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_set_targets_custom(args: argparse.Namespace) -> dict:
    layout = Layout(args.repo)
    state = State(layout)
    ring = load_ring(args.keys)
    targets = state.targets.signed
    target = targets.targets.get(args.target)
    if target is None:
        raise PublishError(f"target {args.target} is not published")
    custom = dict(target.unrecognized_fields.get("custom") or {})
    custom[args.field] = parse_value(args.value)
    target.unrecognized_fields["custom"] = custom
    versions = publish_chain(layout, state, ring, targets)
    return {"target": args.target, "custom": custom, "versions": versions}


def verify_signed(delegator, role: str, md: Metadata, path: Path) -> None:
    try:
        payload = CanonicalJSONSerializer().serialize(md.signed)
        delegator.verify_delegate(role, payload, md.signatures)
    except Exception as e:  # noqa: BLE001
        raise PublishError(f"{path}: {role} signatures do not verify: {e}") from e


def verify_file(meta, data: bytes, path: Path) -> None:
    try:
        meta.verify_length_and_hashes(data)
    except Exception as e:  # noqa: BLE001
        raise PublishError(f"{path}: length or hash does not match: {e}") from e


def cmd_verify(args: argparse.Namespace) -> dict:
    """Checks a repository (e.g. one `defect-central repo` wrote) the way a TUF client does,
    without expiry: every root from 1.root.json on signed by the previous and its own
    threshold, then timestamp, snapshot and targets with lengths, hashes and signatures."""
    layout = Layout(args.repo)
    root_md = load(layout.root(1), "root")
    verify_signed(root_md.signed, "root", root_md, layout.root(1))
    version = 1
    while layout.root(version + 1).exists():
        path = layout.root(version + 1)
        new = load(path, "root")
        if new.signed.version != version + 1:
            raise PublishError(f"{path}: holds root version {new.signed.version}")
        verify_signed(root_md.signed, "root", new, path)
        verify_signed(new.signed, "root", new, path)
        root_md, version = new, version + 1
    root = root_md.signed
    for keyid, key in root.keys.items():
        canonical = encode_canonical(
            {"keytype": key.keytype, "scheme": key.scheme, "keyval": key.keyval}
        )
        if keyid != hashlib.sha256(canonical.encode()).hexdigest():
            raise PublishError(f"root version {version}: key id {keyid} is not the key's sha256")
    timestamp = load(layout.timestamp(), "timestamp")
    verify_signed(root, "timestamp", timestamp, layout.timestamp())
    snapshot_meta = timestamp.signed.snapshot_meta
    snapshot_path = layout.snapshot(snapshot_meta.version)
    data = snapshot_path.read_bytes()
    verify_file(snapshot_meta, data, snapshot_path)
    snapshot = Metadata.from_bytes(data)
    verify_signed(root, "snapshot", snapshot, snapshot_path)
    targets_meta = snapshot.signed.meta["targets.json"]
    targets_path = layout.targets_file(targets_meta.version)
    data = targets_path.read_bytes()
    verify_file(targets_meta, data, targets_path)
    targets = Metadata.from_bytes(data)
    verify_signed(root, "targets", targets, targets_path)
    for name, target in targets.signed.targets.items():
        target_path = layout.targets / f"{target.hashes['sha256']}.{name}"
        verify_file(target, target_path.read_bytes(), target_path)
    return {
        "key_ids": role_key_ids(root),
        "versions": {
            "root": version,
            "timestamp": timestamp.signed.version,
            "snapshot": snapshot.signed.version,
            "targets": targets.signed.version,
        },
        "targets": {name: target.custom for name, target in targets.signed.targets.items()},
        "spec_version": root.spec_version,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def repo_and_keys(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", type=Path, required=True, help="repository folder")
        p.add_argument("--keys", type=Path, required=True, help="keys folder (*.pem)")

    def target_args(p: argparse.ArgumentParser) -> None:
        """The published file, its target name and custom fields, as target commands take them."""
        p.add_argument("--bundle", type=Path, required=True, help="file to publish")
        p.add_argument("--name", required=True, help="flat target name, e.g. surface-classifier-3.dmb")
        p.add_argument("--model", required=True, help='custom "model"')
        p.add_argument("--model-version", type=int, required=True, help='custom "model_version"')
        p.add_argument("--version", required=True, help='custom "version"')

    p = sub.add_parser("init", help="create a repository and its keys; empty targets v1")
    repo_and_keys(p)
    p.add_argument("--root-keys", type=int, default=3, help="root keys to generate (3)")
    p.add_argument("--root-threshold", type=int, default=2, help="root threshold (2)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "add-target",
        help="publish a file as a target with custom fields (no version check); "
        "targets, snapshot and timestamp N+1",
    )
    repo_and_keys(p)
    target_args(p)
    p.add_argument("--stations", help='custom "stations", comma-separated (none = every station)')
    p.add_argument("--lines", help='custom "lines", comma-separated (none = every line)')
    p.set_defaults(func=cmd_add_target)

    p = sub.add_parser(
        "add-delegated-target",
        help="publish a file as a target of a delegated targets role with its own key "
        "(delegated-<role>.pem); the first time, targets N+1 delegates to it; the role's "
        "metadata, snapshot and timestamp N+1",
    )
    repo_and_keys(p)
    p.add_argument("--role", required=True, help="delegated role name, e.g. factory-a")
    p.add_argument(
        "--paths",
        help="path patterns delegated to the role when it is new, comma-separated "
        "(default: the target name)",
    )
    target_args(p)
    p.set_defaults(func=cmd_add_delegated_target)

    p = sub.add_parser(
        "drop-delegated-role",
        help="ATTACK/MISTAKE: snapshot N+1 without a delegated role's metadata while "
        "targets.json still delegates to it (TUF 5.5.5: clients refuse it); timestamp N+1",
    )
    repo_and_keys(p)
    p.add_argument("--role", required=True, help="delegated role name")
    p.set_defaults(func=cmd_drop_delegated_role)

    p = sub.add_parser(
        "resign-timestamp", help="new timestamp for the current snapshot, timestamp key only"
    )
    repo_and_keys(p)
    p.add_argument(
        "--expires-seconds",
        type=int,
        default=DEFAULT_EXPIRY["timestamp"],
        help="seconds until expiry (86400); negative writes an already expired timestamp",
    )
    p.add_argument(
        "--version",
        type=int,
        help="timestamp version to write (default: current + 1; lower = rollback attack)",
    )
    p.set_defaults(func=cmd_resign_timestamp)

    p = sub.add_parser(
        "rotate-root-key",
        help="root N+1 with one root key replaced by a new one (root-K.pem), "
        "signed by a threshold of the old and of the new root keys",
    )
    repo_and_keys(p)
    p.add_argument("--revoke", help="key id of the root key to replace (default: the first listed)")
    p.set_defaults(func=cmd_rotate_root_key)

    p = sub.add_parser(
        "rotate-key",
        help="root N+1 with an online role's key replaced by a new one, then targets, "
        "snapshot and timestamp N+1 signed with the new keys",
    )
    repo_and_keys(p)
    p.add_argument(
        "--role", required=True, choices=ROLES[1:], help="targets, snapshot or timestamp"
    )
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser(
        "sign-root-below-threshold",
        help="ATTACK: write root N+1 (and root.json) signed by only one root key",
    )
    repo_and_keys(p)
    p.add_argument(
        "--replace-role",
        choices=ROLES,
        help="also replace that role's keys with a fresh key written as forged-<role>.pem",
    )
    p.set_defaults(func=cmd_sign_root_below_threshold)

    p = sub.add_parser(
        "set-targets-custom",
        help="ATTACK/MISTAKE: republish a target entry with one custom field changed "
        "(e.g. a lower model_version), validly signed: targets, snapshot and timestamp N+1",
    )
    repo_and_keys(p)
    p.add_argument("--target", required=True, help="published target name")
    p.add_argument("--field", required=True, help="custom field, e.g. model_version")
    p.add_argument("--value", required=True, help="new value, parsed as JSON if it is JSON")
    p.set_defaults(func=cmd_set_targets_custom)

    p = sub.add_parser(
        "verify",
        help="check a repository (e.g. one model-updater wrote) as a TUF client would, expiry "
        "aside; prints versions, key ids and target custom fields",
    )
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    p.set_defaults(func=cmd_verify)

    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except PublishError as e:
        print(f"tuf_publisher {args.command}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
