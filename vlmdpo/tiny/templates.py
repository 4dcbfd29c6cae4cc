"""Chat-template pieces more than one family module uses: a message's content with the family's image marker,
and the LLaVA and ChatML (Qwen-style) turns around it. A family's own template lives with its builder."""

from __future__ import annotations


def message_content(image: str, video: str = "") -> str:
    """The chat-template fragment every tiny family shares: a message's content as a string, or as blocks
    where each ``{"type": "image"}`` becomes ``image`` (the family's image marker), each ``{"type": "video"}``
    ``video`` (its video marker; none for families without video) and text blocks their text."""
    return ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for block in message['content'] %}{% if block['type'] == 'image' %}" + image +
            "{% elif block['type'] == 'video' %}" + video +
            "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}")


def llava_template(image: str = "<image>\n", video: str = "") -> str:
    """LLaVA-1.5's turns: ``USER: ``, ``ASSISTANT: `` or ``SYSTEM: `` before each message, ``</s>`` after the
    assistant's."""
    return ("{% for message in messages %}"
            "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
            "{% else %}SYSTEM: {% endif %}"
            + message_content(image, video)
            + "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
            "{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def chatml_template(image: str = "<|vision_start|><|image_pad|><|vision_end|>",
                    video: str = "") -> str:
    """ChatML turns (Qwen's): ``<|im_start|>role\\n`` content ``<|im_end|>\\n``."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            + message_content(image, video)
            + "<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


LLAVA_CHAT_TEMPLATE = llava_template()
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
CHATML_CHAT_TEMPLATE = chatml_template(video=QWEN_VIDEO)
