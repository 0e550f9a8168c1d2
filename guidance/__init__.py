"""Teachers, prompts and score-distillation estimators.

Everything here turns rendered views into losses whose gradients are the distillation signal;
it knows nothing of radiance fields or cameras beyond the images it is given.
"""
