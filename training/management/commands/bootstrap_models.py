"""``python manage.py bootstrap_models [--base-model PATH] [--force] [--seed N]``

With no live policy: trains a tokenizer, a policy and a reward model from scratch (about a minute on
a CPU, see ``training.ml.bootstrap``) into ``VAR_DIR/artifacts/{policy,reward}/v<N>``, registers them
with their checksums and makes both live. With a live policy it does nothing, unless ``--force``.

``--base-model PATH`` registers an existing local Hugging Face causal LM folder, in place, as the next
policy version and makes it live instead of training.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from models_registry.artifacts import sha256_tree
from models_registry.models import ModelVersion
from models_registry.selectors import live_version, next_version_number
from models_registry.services import model_version_make_live, model_version_register

POLICY = ModelVersion.Kind.POLICY
REWARD = ModelVersion.Kind.REWARD


def train_models(policy_dir: Path, reward_dir: Path, *, seed: int, log: Any) -> dict[str, Any]:
    # Imported here: torch and transformers take seconds to import, and only this path needs them.
    from training.ml.bootstrap import bootstrap

    return bootstrap(policy_dir, reward_dir, seed=seed, log=log)


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    from training.ml.checkpoints import CheckpointError, inspect_causal_lm

    try:
        return inspect_causal_lm(path)
    except CheckpointError as exc:
        raise CommandError(f"--base-model: {exc}") from exc


class Command(BaseCommand):
    help = "Train and deploy a first policy and reward model, or deploy a local checkpoint as the policy."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-model", metavar="PATH", help="A local Hugging Face causal LM folder to deploy as the policy."
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Bootstrap new versions even if a policy is live (not needed with --base-model).",
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of the generated data and the weights.")

    def handle(self, *args: Any, base_model: str | None, force: bool, seed: int, **options: Any) -> None:
        if base_model:
            self.register_base_model(Path(base_model).expanduser().resolve())
            return
        live = [v for v in (live_version(POLICY), live_version(REWARD)) if v is not None]
        if any(v.kind == POLICY for v in live) and not force:
            labels = ", ".join(v.label for v in live)
            self.stdout.write(f"Models are live ({labels}); nothing to do. --force bootstraps new versions.")
            if not any(v.kind == REWARD for v in live):
                self.stdout.write("No reward model is live.")
            return
        self.bootstrap(seed)

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def bootstrap(self, seed: int) -> None:
        root = Path(settings.VAR_DIR) / "artifacts"
        # Folders are named after the numbers the versions will get; a registration racing this one
        # would only make a folder's name differ from its version's number (artifact_path is the truth).
        targets = {kind: root / kind / f"v{next_version_number(kind)}" for kind in (POLICY, REWARD)}
        for target in targets.values():
            self.refuse_if_registered(target)
        root.mkdir(parents=True, exist_ok=True)
        self.say(f"Bootstrapping a policy and a reward model (seed {seed}) into {root} ...")
        # Trained into a staging folder and moved into place at the end, so an interrupted run never
        # leaves a half-written folder where a version is expected.
        staging = Path(tempfile.mkdtemp(prefix=".bootstrap-", dir=root))
        try:
            summary = train_models(staging / POLICY, staging / REWARD, seed=seed, log=self.say)
            for kind, target in targets.items():
                if target.exists():  # left by an interrupted run: no version points at it (checked above)
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                (staging / kind).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        checksums = {kind: sha256_tree(target) for kind, target in targets.items()}
        common = {key: summary[key] for key in ("seed", "conversations", "vocab_size")}
        with transaction.atomic():
            policy = model_version_register(
                kind=POLICY,
                artifact_path=str(targets[POLICY]),
                checksums=checksums[POLICY],
                metrics={"bootstrap": {**common, **summary[POLICY]}},
                reason="bootstrap_models: trained from scratch",
            )
            reward = model_version_register(
                kind=REWARD,
                artifact_path=str(targets[REWARD]),
                checksums=checksums[REWARD],
                metrics={"bootstrap": {**common, **summary[REWARD], "initialised_from": policy.label}},
                reason="bootstrap_models: trained from scratch",
            )
            model_version_make_live(version=policy, reason="bootstrap_models: first policy")
            model_version_make_live(version=reward, reason="bootstrap_models: first reward model")
        self.say(f"Registered {policy.label} ({summary[POLICY]['params']:,} parameters) at {targets[POLICY]}.")
        self.say(f"Registered {reward.label} ({summary[REWARD]['params']:,} parameters) at {targets[REWARD]}.")
        self.say(f"{policy.label} and {reward.label} are live. Took {summary['seconds']:.0f} s.")

    def refuse_if_registered(self, folder: Path) -> None:
        if ModelVersion.objects.filter(artifact_path=str(folder)).exists():
            raise CommandError(f"{folder} already belongs to a registered version; not overwriting it.")

    def register_base_model(self, folder: Path) -> None:
        self.say(f"Checking {folder} ...")
        info = inspect_checkpoint(folder)
        self.say(f"A {info['model_type']} causal LM, {info['vocab_size']:,} tokens. Computing checksums ...")
        checksums = sha256_tree(folder)
        current = live_version(POLICY)
        if current is not None and current.artifact_path == str(folder) and current.checksums == checksums:
            self.stdout.write(f"{current.label} is live and is already {folder}; nothing to do.")
            return
        if not info["has_chat_template"]:
            self.say("It has no chat template: the chat will use a plain 'User: ... Assistant:' format.")
        with transaction.atomic():
            version = model_version_register(
                kind=POLICY,
                artifact_path=str(folder),
                checksums=checksums,
                metrics={"base_model": info},
                parent=None,
                reason=f"bootstrap_models --base-model {folder}",
            )
            model_version_make_live(version=version, reason=f"bootstrap_models --base-model {folder}")
        retired = f"; {current.label} is retired" if current else ""
        self.say(f"Registered {version.label} from {folder} and made it live{retired}.")
