"""Where streams come from: files, RTSP cameras, WebRTC publishers (WHIP), and streams added at run time."""

from . import file as file
from . import rtsp as rtsp
from . import streams as streams
from . import whip as whip
