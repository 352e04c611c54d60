"""Per-world, per-chapter default settings: the one table of profiles.

A notebook parameter left at None takes its world's value from here (``World.setting``), so the
paper profile's budgets are not overridden by the CPU notebook defaults. The ``cpu`` values are the
chapters' notebook defaults; ``smoke`` runs the same code path in seconds; ``paper`` is the thesis'
scale (T = 25 latent DDIM steps, budgets 1024 / 512).
"""

SETTINGS: dict[str, dict[str, dict]] = {
    "cpu": {
        # budget: the thesis' B; the starts restart_limit replaces need the room (Neurons chapter)
        "neurons": {"n_samples": 32, "steps": 1024, "ddim_steps": 10},
        "classifier": {"n_samples": 32, "steps": 150, "ddim_steps": 10},
        # the SAE chapter; layer / sae_kind / expansion / sae_steps: the digits SAE it trains (worlds.digits.sae)
        "sae": {"n_samples": 32, "steps": 40, "ddim_steps": 10, "layer": 2, "sae_kind": "relu", "expansion": 4,
                "sae_steps": 3000, "concept_set": "digits"},
    },
    "smoke": {
        "neurons": {"n_samples": 4, "steps": 3, "ddim_steps": 5},
        "classifier": {"n_samples": 4, "steps": 3, "ddim_steps": 3},
        "sae": {"n_samples": 4, "steps": 3, "ddim_steps": 3, "layer": 1, "sae_kind": "relu", "expansion": 4,
                "sae_steps": 30, "concept_set": "digits"},  # digits-vit-tiny has 2 blocks
    },
    "paper": {
        "neurons": {"n_samples": 32, "steps": 1024, "ddim_steps": 25},
        "classifier": {"n_samples": 32, "steps": 512, "ddim_steps": 25},
        "sae": {"n_samples": 32, "steps": 512, "ddim_steps": 25},  # the SAE itself: PaperConfig.sae_path
    },
}
