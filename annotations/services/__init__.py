"""Every write of labels, suggestions, reviews and dataset versions goes through these modules.

One owner per rule, and imports that run one way (a module imports only those above it):

    categories.py         defect categories
    image_state.py        the ONLY writer of Image.status / is_normal / verdict after upload
    labels.py             labels: create, update, delete, clean_geometry, labels_import
    comments.py           notes on images
    suggestions.py        model output -> pending suggestions (suggestions_store)
    review.py             human decisions: suggestions, labels, image verdicts, normal images
    dataset_versions.py   freeze and compare immutable versions
    dataset_export.py     export jobs, download checks, expiry of old zips
    dataset_import.py     COCO / YOLO / MVTec imports (one job kind, one way in for labels)
    detectors.py          detector training from a dataset version: proposal, checks, the job
    image_bulk.py         one action on many images (the grid's selection)
    threshold_effect.py   what a threshold does on the reviewed images (read-only)

Import the module you need (``from annotations.services import labels``); this package
re-exports nothing, so there is one name for each function.
"""
