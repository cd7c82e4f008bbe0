"""Counts image decodes in every Python process of a test run (put on PYTHONPATH by the test).

Each pixel decode appends one line to the file named by THUMBFEAT_TEST_DECODE_LOG: the format,
the size Pillow decodes at (after any reduced-size draft) and the length of the bytes decoded.
"""

import os

LOG = os.environ.get("THUMBFEAT_TEST_DECODE_LOG")

if LOG:
    from PIL import ImageFile

    _load = ImageFile.ImageFile.load

    def _counting_load(self):  # type: ignore[no-untyped-def]
        if self.tile and getattr(self, "fp", None) is not None:
            try:
                length = self.fp.getbuffer().nbytes
            except AttributeError:
                length = -1
            with open(LOG, "a") as log:
                log.write(f"{os.getpid()} {self.format} {self.size[0]}x{self.size[1]} "
                          f"{length}\n")
        return _load(self)

    ImageFile.ImageFile.load = _counting_load
