"""Per-world, per-chapter default settings: the one table of profiles.

A notebook parameter left at None takes its world's value from here (``World.setting``), so the
paper profile's budgets are not overridden by the CPU notebook defaults. The ``cpu`` values are the
chapters' notebook defaults; ``smoke`` runs the same code path in seconds; ``paper`` is the thesis'
scale (T = 25 latent DDIM steps, budgets 1024 / 512).
"""

SETTINGS: dict[str, dict[str, dict]] = {
    "cpu": {
        "neurons": {"n_samples": 32, "steps": 400, "ddim_steps": 10},
        "classifier": {"n_samples": 32, "steps": 150, "ddim_steps": 10},
    },
    "smoke": {
        "neurons": {"n_samples": 4, "steps": 3, "ddim_steps": 5},
        "classifier": {"n_samples": 4, "steps": 3, "ddim_steps": 3},
    },
    "paper": {
        "neurons": {"n_samples": 32, "steps": 1024, "ddim_steps": 25},
        "classifier": {"n_samples": 32, "steps": 512, "ddim_steps": 25},
    },
}
