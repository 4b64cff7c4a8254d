"""The playground: draw a digit and watch the classifier answer, ask the generator for any digit.
A local page and a small JSON API over the networks MLflow's registry holds, run through the
same code `evaluate` and `evaluate_gan` use (inference.py).

    python -m digitlab.play [--port 8000] [--host 127.0.0.1]     # make play

Layers, each importing only those below it: drawing.py (a drawing as MNIST sees it) and
registry.py (the registered networks), answers.py (what the networks answer), api.py (the
page and the JSON API), __main__.py (the command). The page and its script are digitlab's own
files (static/), served from here: it works offline.
"""
