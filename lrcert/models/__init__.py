"""Reading models into the layer list: ONNX files (:mod:`.load`, with graph forms made plain in
:mod:`.fold` and newer op versions registered in :mod:`.onnx_ops`), PyTorch modules and programs
traced op by op into :class:`~lrcert.network.ir.Network` layers (:mod:`.convert`), ReLU RNNs
unrolled step by step (:mod:`.recurrent`), and converted networks kept between runs as data only
(:mod:`.cache`, :mod:`.stored`).

May import: :mod:`lrcert.network`, :mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
