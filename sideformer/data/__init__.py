"""Datasets in the metadata.json layout, their checks, transforms and synthetic scenes."""

import cv2

# DataLoader workers are forked from the process that imports this. OpenCV's thread pool does not survive
# a fork: a worker deadlocked in its first cv2 call when a pool thread held a lock at fork time. So the
# main process never starts the pool (its cv2 calls run on the calling thread); the loader workers, one
# OpenCV thread each (dataset.worker_init), are where decoding runs in parallel.
cv2.setNumThreads(0)
