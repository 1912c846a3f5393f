"""Video out: ``overlay`` draws what the models found on the frames, ``mp4`` records them in
MP4 segments, ``view`` sends them to browsers over WebRTC (WHEP)."""

from . import mp4 as mp4
from . import overlay as overlay
from . import view as view
