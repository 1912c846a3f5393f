"""Images to model inputs."""

from . import prepare as prepare
