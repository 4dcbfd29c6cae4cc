"""The 80 COCO object categories (Lin et al. 2014, arXiv:1405.0312) and a small set of COCO-style scenes.

``COCO_OBJECTS`` are the detection categories' names as COCO publishes them. ``COCO_STYLE_OBJECT_SETS`` are
object lists written for this package in the manner of COCO images' annotations (which objects appear
together in an everyday scene); they seed the co-occurrence table of
``data_recipes.pair_builders.hallucination`` when a user's rows are too few to give one.
"""

COCO_OBJECTS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

COCO_STYLE_OBJECT_SETS: tuple[tuple[str, ...], ...] = (
    ("person", "car", "traffic light", "bus", "truck"),
    ("person", "bicycle", "car", "traffic light", "stop sign"),
    ("car", "fire hydrant", "parking meter", "truck"),
    ("person", "bench", "umbrella", "handbag", "backpack"),
    ("person", "motorcycle", "car", "truck"),
    ("airplane", "person", "truck", "suitcase"),
    ("train", "person", "bench", "backpack"),
    ("boat", "person", "bird", "umbrella"),
    ("dog", "person", "frisbee", "bench"),
    ("cat", "couch", "remote", "tv"),
    ("cat", "bed", "book", "laptop"),
    ("dog", "couch", "potted plant", "book"),
    ("horse", "person", "cow", "sheep"),
    ("sheep", "cow", "dog", "person"),
    ("elephant", "person", "truck"),
    ("giraffe", "zebra", "elephant"),
    ("zebra", "giraffe", "bird"),
    ("bear", "bird"),
    ("person", "skis", "snowboard", "backpack"),
    ("person", "surfboard", "boat", "kite"),
    ("person", "skateboard", "car", "bench"),
    ("person", "sports ball", "baseball bat", "baseball glove"),
    ("person", "tennis racket", "sports ball", "chair"),
    ("person", "kite", "dog", "umbrella"),
    ("dining table", "pizza", "cup", "knife", "fork", "person"),
    ("dining table", "sandwich", "bowl", "cup", "spoon"),
    ("dining table", "cake", "fork", "knife", "wine glass", "person"),
    ("dining table", "wine glass", "bottle", "bowl", "chair"),
    ("bowl", "banana", "apple", "orange"),
    ("broccoli", "carrot", "bowl", "dining table", "fork"),
    ("hot dog", "bottle", "cup", "person"),
    ("donut", "cup", "dining table", "person"),
    ("oven", "microwave", "refrigerator", "sink", "bowl"),
    ("toaster", "microwave", "sink", "bottle", "cup"),
    ("refrigerator", "bottle", "oven", "clock"),
    ("chair", "couch", "tv", "potted plant", "vase", "clock"),
    ("bed", "clock", "book", "chair", "teddy bear"),
    ("laptop", "keyboard", "mouse", "cell phone", "cup", "book"),
    ("tv", "remote", "couch", "chair", "laptop"),
    ("toilet", "sink", "toothbrush", "hair drier", "bottle"),
    ("sink", "toothbrush", "cup", "scissors"),
    ("teddy bear", "bed", "book", "person"),
    ("vase", "potted plant", "dining table", "chair", "book"),
    ("person", "cell phone", "handbag", "tie", "umbrella"),
    ("person", "tie", "chair", "laptop", "cup"),
)
