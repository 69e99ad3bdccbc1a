"""The lab: what a student need not read to train, evaluate and copy the MLP.

Run each script from the project's folder as a module, so that it finds the
lesson's modules (model.py, data.py, cli.py, checkpoint.py) beside it:

    python -m lab.predict model.pt photo.jpg    # your own digits, or a row of them
    python -m lab.draw model.pt                 # draw in the browser (draw.html)
    python -m lab.pictures model.pt --curves curves.png
    python -m lab.zipcodes model.pt             # rows of test digits, read and measured
    python -m lab.pages model.pt                # digits on pencil, pen, ruled pages: measured
    python -m lab.crowd model.pt                # the drawing page under a class at once
    python -m lab.benchmark                     # the training speed, against the tutorial's

segment.py finds the digits in a row, for predict.py and draw.py.
"""

import os

# Where model.py and the rest are: the folder a script that starts another runs it in.
PROJECT_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
