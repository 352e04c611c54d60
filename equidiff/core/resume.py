"""Resumable state of Algorithm 1: the checkpoint file of ``InvariantConfig(checkpoint_path=…)``.

A checkpoint holds the loop's state after a step (latents, optimiser state, per-sample flags,
history) and the identity of the run it belongs to (:func:`run_identity`): the settings, the
objective's description and a fingerprint of the model it reads, the prior's class, settings and
network fingerprints, hashes of the query, the target y* = L(x*) and the starting latents, and the
sample offset. :func:`load_checkpoint` resumes only the same run and refuses any other with a
``ValueError`` naming the ``checkpoint_path`` and what differs (issue 18: a second query resumed
the first one's checkpoint and reported its members as converged). The file is written to a
temporary name and renamed, so a kill mid-write never leaves a broken checkpoint.
"""

from __future__ import annotations

import hashlib
import os

import torch

__all__ = ["run_identity", "load_checkpoint", "save_checkpoint"]


def _tensor_sha(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (on the CPU): equal exactly when the tensors are."""
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _module_identity(module: torch.nn.Module) -> dict:
    """A module's class and a cheap fingerprint of its weights: the names, shapes and dtypes of its
    whole state dict and the bytes of up to 8 of its tensors (first, last and evenly between), so
    another architecture or another training of the same one has another fingerprint."""
    items = list(module.state_dict().items())
    h = hashlib.sha256()
    for k, v in items:
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
    for i in sorted({round(j * (len(items) - 1) / 7) for j in range(8)} if items else ()):
        h.update(_tensor_sha(items[i][1]).encode())
    return {"class": type(module).__name__, "weights": h.hexdigest()[:16]}


def _prior_identity(prior) -> dict:
    """The prior's class, its plain settings (e.g. ``num_steps``, ``clamp``, ``shape``) and the
    fingerprints of the networks it holds (a DDPM's UNet, a DiT and its VAE)."""
    out: dict = {"class": type(prior).__name__}
    if isinstance(prior, torch.nn.Module):
        out["modules"] = {"self": _module_identity(prior)}
        return out
    settings, modules = {}, {}
    for k, v in sorted(vars(prior).items()):
        if k.startswith("_") or k == "checkpointing":  # checkpointing changes memory, not results
            continue
        if isinstance(v, torch.nn.Module):
            modules[k] = _module_identity(v)
        elif isinstance(v, (bool, int, float, str, type(None))):
            settings[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) for e in v):
            settings[k] = list(v)
    out["settings"], out["modules"] = settings, modules
    return out


def run_identity(cfg, objective, prior, query, tgt, z_init, sample_offset, filter) -> dict:
    """What a checkpoint belongs to: the settings, the objective (description and the model it reads),
    the prior, the query, the target y* (its hash; the tensor is stored beside it), the starting
    latents and the sample offset. Only a run equal in all of them may resume the checkpoint."""
    model = objective if isinstance(objective, torch.nn.Module) else getattr(objective, "model", None)
    return {
        "config": cfg._identity(),
        "objective": getattr(objective, "description", getattr(objective, "__name__", type(objective).__name__)),
        "model": _module_identity(model) if isinstance(model, torch.nn.Module) else None,
        "prior": _prior_identity(prior),
        "query": _tensor_sha(query),
        "target": _tensor_sha(tgt),
        "z_init": _tensor_sha(z_init),
        "sample_offset": int(sample_offset),
        "filter": None if filter is None else getattr(filter, "__qualname__", type(filter).__name__),
    }


def _short(v) -> str:
    if isinstance(v, dict) and "class" in v and "weights" in v:
        return f"{v['class']} {v['weights'][:8]}"
    if isinstance(v, str) and len(v) == 64:
        return f"sha256 {v[:12]}…"
    return repr(v)


def _check_resumable(ckpt: str, state: dict, identity: dict, tgt: torch.Tensor) -> None:
    """Refuse (ValueError naming ``checkpoint_path`` and what differs) to resume another run's checkpoint."""
    if "identity" not in state:
        raise ValueError(
            f"checkpoint_path {ckpt!r} was written by an older equidiff that did not record which query, "
            "objective, model and prior it belongs to; it cannot be checked, so it is not resumed: "
            "delete the file (or use another path) to start over"
        )
    old = state["identity"]
    if old["config"] != identity["config"]:
        diff = sorted(k for k in old["config"] if old["config"][k] != identity["config"].get(k))
        raise ValueError(
            f"checkpoint_path {ckpt!r} was written with other settings (differs in {diff}); "
            "use another path or delete the file"
        )
    diffs = []
    for k in ("objective", "model", "prior", "query", "target", "z_init", "sample_offset", "filter"):
        if k == "target":
            # y* is recomputed from the query: compared with a tolerance, so a last-bit difference of
            # a non-deterministic kernel does not refuse a genuine resume
            old_t = state["target"]
            same = old_t.shape == tgt.shape and torch.allclose(old_t, tgt.detach().cpu().to(old_t.dtype),
                                                               rtol=1e-5, atol=1e-6)
            if not same:
                diffs.append(f"target y* = L(x*) ({_short(old[k])} in the file, {_short(identity[k])} now)")
        elif k == "prior" and old[k] != identity[k]:
            parts = [f"{p} ({_short(old[k].get(p))} in the file, {_short(identity[k].get(p))} now)"
                     for p in ("class", "settings", "modules") if old[k].get(p) != identity[k].get(p)]
            diffs.append("prior: " + "; ".join(parts))
        elif k != "prior" and old[k] != identity[k]:
            diffs.append(f"{k} ({_short(old[k])} in the file, {_short(identity[k])} now)")
    if diffs:
        raise ValueError(
            f"checkpoint_path {ckpt!r} belongs to another run, not resumed: it differs in "
            + "; ".join(diffs) + ". Use another checkpoint_path for this run, or delete the file to start over"
        )


def load_checkpoint(ckpt: str, identity: dict, tgt: torch.Tensor) -> dict | None:
    """The state saved at ``ckpt`` when it exists and belongs to this run (``identity``, target ``tgt``);
    None when there is no file; a ``ValueError`` when it belongs to another run."""
    if not os.path.exists(ckpt):
        return None
    state = torch.load(ckpt, weights_only=True)
    _check_resumable(ckpt, state, identity, tgt)
    return state


def save_checkpoint(ckpt, cfg, step, z, z_init, opt, active, converged, steps_to, loss, x, m, history, since, restarts,
                    identity=None, target=None, best=None):
    """Write the resumable state after step ``step`` every ``checkpoint_every`` steps, with the
    identity of the run it belongs to (:func:`run_identity`) and the target y*."""
    if not (ckpt and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
        return
    tmp = ckpt + ".tmp"
    torch.save(
        {
            "identity": identity,
            "target": target,
            "config": cfg._identity(),
            "z": z.detach(),
            "z_init": z_init,
            "optimizer": opt.state_dict(),
            "active": active,
            "converged": converged,
            "steps_to": steps_to,
            "loss": loss,
            "x": x,
            "m": m,
            "history": history,
            "since": since,
            "restarts": restarts,
            "best": best,  # lowest loss per sample since its z_T was drawn (restart_after)
            "next_step": step + 1,
        },
        tmp,
    )
    os.replace(tmp, ckpt)  # atomic: a kill mid-write never leaves a broken checkpoint
