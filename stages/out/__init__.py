"""Video out: ``overlay`` draws what the models found on the frames, ``record`` writes them to
MP4 segments, ``view`` sends them to browsers over WebRTC (WHEP)."""

from . import overlay as overlay
from . import record as record
from . import view as view
