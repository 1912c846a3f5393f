"""A real RTSP server for the tests: GStreamer's gst-rtsp-server, run by the system Python.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam

Serves a live H.264 stream (``videotestsrc`` with a running clock overlay, encoded by x264 at
640x360, 25 fps, a keyframe every second, SPS/PPS repeated in-band) at
``rtsp://127.0.0.1:<port><mount>`` until killed, and prints ``ready`` once it listens. A live
test source rather than a looped file: it never ends, so a client sees a camera, not a file.

Needs the Debian packages ``python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-{base,good,bad,ugly}`` (not installable into a virtualenv).
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( videotestsrc is-live=true pattern=ball "
    "! video/x-raw,width={width},height={height},framerate={fps}/1 "
    '! clockoverlay font-desc="Sans 24" '
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 "
    "! video/x-h264,profile=baseline "
    "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/test")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(width=args.width, height=args.height, fps=args.fps))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
