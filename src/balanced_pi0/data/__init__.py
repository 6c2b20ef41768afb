"""LeRobot v3.0 datasets: writing (``writer``), the ``bpi0 fetch`` stage and its sources
(``fetch``, ``hub``, ``b1k``), the episode split (``split``), the low-dimensional columns
(``lowdim``) and the training chunk loader (``loader``)."""
