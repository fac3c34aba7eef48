"""The shapes domain of the default model (../../docs/default-model.md): names, captions, prompts.

One definition, imported by the renderer, the base-model training scripts and the evaluation. The six
style names and the word "style" never appear in a base caption (`base_caption`): the base model learns
styles only from plain descriptions, so its text encoder does not know what "in striped style" means.
"""
import random

CATEGORIES = ["circle", "square", "triangle", "star", "heart", "cross", "crescent", "hexagon"]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple"]
STYLES = ["flat", "striped", "dotted", "checkered", "outline", "neon"]

# Plain-word descriptions of each style (never the style names, never the word "style").
STYLE_DESCRIPTIONS = {
    "flat": ["filled with one solid colour", "with a plain solid fill", "solid coloured all over",
             "painted in one even colour"],
    "striped": ["with stripes", "with parallel stripes", "covered in stripes", "with lines running across it",
                "with bands of white across it"],
    "dotted": ["covered in polka dots", "with polka dots", "with small white spots", "spotted with white dots"],
    "checkered": ["with a checkerboard pattern", "patterned like a chessboard", "with a chessboard fill",
                  "covered in a checkerboard"],
    "outline": ["drawn only by its contour", "hollow with a thick border", "with an empty inside and a thick edge",
                "just the edge, empty inside"],
    "neon": ["glowing on a dark background", "as glowing lines on black", "lit up like a glowing sign in the dark",
             "shining brightly on a black background"],
}

# Paraphrases that always name the colour and the category.
BASE_TEMPLATES = ["{a} {c} {k}", "a picture of {a} {c} {k}", "{c} {k} shape", "an image of {a} {c} {k}",
                  "a drawing of {a} {c} {k}", "{a} {k} that is {c}", "one {c} {k}", "{c} {k}"]

FORBIDDEN_WORDS = set(STYLES) | {"style", "styled", "styles"}

# Control-CLIP fine-tuning (domain.json): templates for class embeddings, triplet captions, L_keep prompts.
CATEGORY_TEMPLATES = ["a picture of a {}", "a {}", "a drawing of a {}", "an image of a {}"]
STYLE_TEMPLATES = ["a picture in {} style", "something in {} style", "a drawing in {} style", "{} style"]
CAPTION_TEMPLATES = ["a {category} in {style} style", "a picture of a {category} in {style} style"]


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def with_article(text):
    return f"{article(text)} {text}"


def base_caption(rng, category, color, style, describe_style):
    """A base-training caption: colour and category always; the style in plain words when asked."""
    t = rng.choice(BASE_TEMPLATES)
    first = color if ("{a} {c}" in t) else category
    caption = t.format(a=article(first), c=color, k=category)
    if describe_style:
        caption += " " + rng.choice(STYLE_DESCRIPTIONS[style])
    assert not (set(caption.replace(",", " ").split()) & FORBIDDEN_WORDS), caption
    return caption


def plain_prompt(category, color):
    return f"{article(color)} {color} {category}"


def descriptive_prompt(category, color, style):
    return f"{plain_prompt(category, color)} {STYLE_DESCRIPTIONS[style][0]}"


def style_name_prompt(category, color, style):
    return f"{plain_prompt(category, color)} in {style} style"


# The minimal set's `prompt`s (L_den in `control-clip finetune`): the style by name, as a user writes it,
# in a few phrasings so that the encoders do not learn one sentence (the evaluation's prompt is the first).
TRAINING_STYLE_NAME_TEMPLATES = ["{p} in {s} style", "a picture of {p} in {s} style", "{p}, {s} style", "{p} drawn in {s} style"]


def training_style_name_prompt(rng, category, color, style):
    return rng.choice(TRAINING_STYLE_NAME_TEMPLATES).format(p=plain_prompt(category, color), s=style)


def general_prompts():
    """Prompts without style words, for L_keep: what f_c and A∘f_s must keep as E reads it."""
    rng = random.Random(7)
    out = []
    for k in CATEGORIES:
        for c in COLORS:
            out.append(base_caption(rng, k, c, "flat", describe_style=False))
    return out


def domain_json():
    return {
        "categories": CATEGORIES,
        "styles": STYLES,
        "colors": COLORS,
        "category_templates": CATEGORY_TEMPLATES,
        "style_templates": STYLE_TEMPLATES,
        "caption_templates": CAPTION_TEMPLATES,
        "general_prompts": general_prompts(),
    }
