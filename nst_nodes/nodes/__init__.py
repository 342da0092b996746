"""The nodes: thin adapters from ComfyUI metadata to the plain functions of this package, by stage.

Each class declares its inputs once (schema.py), from which its ComfyUI V1 INPUT_TYPES and
VALIDATE_INPUTS come, and ComfyUI's other V1 attributes directly (RETURN_TYPES, FUNCTION, ...), so
the package loads as a ComfyUI custom-node pack; every node asks its host (host.py) for device,
folders, progress and stop.
"""

from .color import Luminance, MatchColors, OriginalColors
from .fast import ApplyStylizer, LoadStylizer, SaveStylizer, TrainStylizer
from .images import LoadImage, LoadImageSet, LoadMask, PlotHistory, ResizeImage, ResizeToMatch, SaveImage
from .metrics import QualityMetrics
from .network import DenormalizeImage, GramMatrices, NormalizeImage, StyleStatistics, VGG19Model, VGGFeatures
from .objective import CombineLosses, ContentLoss, StyleLoss, TVLoss
from .optimizer import OptimizeImage
from .video import LoadVideo, OpticalFlow, SaveVideo, TemporalLoss, VideoMetrics, Warp

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "NSTLoadImage": LoadImage,
    "NSTLoadMask": LoadMask,
    "NSTResizeImage": ResizeImage,
    "NSTResizeToMatch": ResizeToMatch,
    "NSTLuminance": Luminance,
    "NSTOriginalColors": OriginalColors,
    "NSTMatchColors": MatchColors,
    "NSTVGG19": VGG19Model,
    "NSTNormalize": NormalizeImage,
    "NSTDenormalize": DenormalizeImage,
    "NSTFeatures": VGGFeatures,
    "NSTStyleStatistics": StyleStatistics,
    "NSTContentLoss": ContentLoss,
    "NSTStyleLoss": StyleLoss,
    "NSTTVLoss": TVLoss,
    "NSTCombineLosses": CombineLosses,
    "NSTOptimize": OptimizeImage,
    "NSTSaveImage": SaveImage,
    "NSTPlotHistory": PlotHistory,
    "NSTQualityMetrics": QualityMetrics,
    "NSTLoadVideo": LoadVideo,
    "NSTSaveVideo": SaveVideo,
    "NSTOpticalFlow": OpticalFlow,
    "NSTWarp": Warp,
    "NSTTemporalLoss": TemporalLoss,
    "NSTVideoMetrics": VideoMetrics,
    "NSTLoadImageSet": LoadImageSet,
    "NSTTrainStylizer": TrainStylizer,
    "NSTApplyStylizer": ApplyStylizer,
    "NSTSaveStylizer": SaveStylizer,
    "NSTLoadStylizer": LoadStylizer,
    "NSTGramMatrices": GramMatrices,  # the former id of NSTStyleStatistics
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "NSTLoadImage": "Load Image (NST)",
    "NSTLoadMask": "Load Mask (NST)",
    "NSTResizeImage": "Resize Image (NST)",
    "NSTResizeToMatch": "Resize to Match (style scale)",
    "NSTLuminance": "Luminance Only",
    "NSTOriginalColors": "Original Colours",
    "NSTMatchColors": "Match Colours",
    "NSTVGG19": "VGG19 Model",
    "NSTNormalize": "Normalize for Model",
    "NSTDenormalize": "De-normalize and Clamp",
    "NSTFeatures": "VGG Features",
    "NSTStyleStatistics": "Style Statistics",
    "NSTContentLoss": "Content Loss",
    "NSTStyleLoss": "Style Loss",
    "NSTTVLoss": "Total Variation Loss",
    "NSTCombineLosses": "Combine Losses",
    "NSTOptimize": "Optimize Image",
    "NSTSaveImage": "Save Image (NST)",
    "NSTPlotHistory": "Plot History",
    "NSTQualityMetrics": "Quality Metrics",
    "NSTLoadVideo": "Load Video (NST)",
    "NSTSaveVideo": "Save Video (NST)",
    "NSTOpticalFlow": "Optical Flow",
    "NSTWarp": "Warp by Flow",
    "NSTTemporalLoss": "Temporal Loss",
    "NSTVideoMetrics": "Video Metrics",
    "NSTLoadImageSet": "Load Image Set",
    "NSTTrainStylizer": "Train Stylizer",
    "NSTApplyStylizer": "Apply Stylizer",
    "NSTSaveStylizer": "Save Stylizer",
    "NSTLoadStylizer": "Load Stylizer",
    "NSTGramMatrices": "Style Statistics",
}
