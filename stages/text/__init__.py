"""Text in images: PP-OCRv4 detection, the crops of what it found, recognition."""

from . import text_crops as text_crops
from . import text_detection as text_detection
from . import text_recognition as text_recognition
