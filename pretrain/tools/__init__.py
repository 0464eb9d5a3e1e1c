"""Tools that look at a model: attention maps (attention_maps.py), what a preset costs (model_info.py), and
`pretrain eval` on a checkpoint or an export (evaluate.py).

Owns nothing a run depends on. Imports pretrain/config/, pretrain/export/
(a trained model, loaded back), pretrain/train/ (the cost model),
pretrain/evaluation/ (the scoring) and pretrain/tracking/ (to log the scores).
"""
