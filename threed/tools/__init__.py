"""Research tools over the product core: benchmarks (``bench``), diagnostics (``colour_pull``) and the
quality table (``quality_table``). They call the core's own functions (the run, the trainer's render,
the guidance's predictions), never copies of them, so their numbers follow any change to training."""
