"""Run by OpenCV 4's Python (``.venv-opencv4``): its own Darknet loader on a cfg, weights and
images, printing, as JSON per image, every row of its YOLO layers with a class score above a
floor: ``[cx, cy, w, h, objectness, scores...]``, normalized, as OpenCV decodes them.

    python darknet_reference.py CFG WEIGHTS SIZE FLOOR IMAGE...
"""

import json
import sys

import cv2

cfg, weights, size, floor, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
net = cv2.dnn.readNetFromDarknet(cfg, weights)
rows = {}
for path in images:
    image = cv2.imread(path)
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255, (size, size), swapRB=True, crop=False))
    outputs = net.forward(net.getUnconnectedOutLayersNames())
    rows[path] = [row.tolist() for output in outputs for row in output if row[5:].max() > floor]
print(json.dumps({"opencv": cv2.__version__, "rows": rows}))
