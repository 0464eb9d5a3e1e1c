"""Tools that look at a model: attention maps (attention_maps.py) and what a preset costs (model_info.py).

Owns nothing a run depends on. Imports pretrain/config/, pretrain/export/
(a trained model, loaded back) and pretrain/train/ (the cost model).
"""
