"""Built-in benchmark scorers, one module each; every module registers its scorer through
the register_metrics hook, exactly as a third-party plugin would."""
