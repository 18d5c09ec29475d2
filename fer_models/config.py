"""The model part of a trial configuration.

One flat, typed config drives one builder (`fer_models.build_model`). The four published
architectures are points of it (see `fer_models.presets`), not separate classes. Every field
changes what is built; `tests/test_models.py` proves it for each one.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .attention import check_attention
from .errors import UserError

VALID_PATCH_COUNTS = (0, 1, 4, 9, 16, 25, 36, 49)


class ModelConfig(BaseModel):
    """Everything `build_model` needs. Extra keys are an error, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- backbone --------------------------------------------------------------------
    backbone: str = Field("resnet18", description="any timm CNN that supports features_only, or 'fercnn' (fer_models.fercnn)")
    fercnn_width: Optional[int] = Field(
        None, ge=4, le=256, description="backbone 'fercnn' only: first stage's channels, doubled per stage (None: 16)")
    fercnn_depth: Optional[int] = Field(
        None, ge=1, le=8, description="backbone 'fercnn' only: separable residual blocks per stage (None: 1)")
    pretrained_path: Optional[str] = Field(
        None, description="local state-dict file (torch.load(weights_only=True)); never a download")
    pretrained: Optional[str] = Field(
        None, min_length=1, description="timm weights of the backbone: 'imagenet' (timm's default tag) or a timm "
                                        "pretrained tag ('a1_in1k'); hub, HF cache or pretrained_file (fer_models.pretrained)")
    pretrained_file: Optional[str] = Field(
        None, min_length=1, description="local weight file timm loads for `pretrained` (pretrained_cfg_overlay file=); "
                                        "alone: the backbone's default tag")
    in_chans: int = Field(3, ge=1, le=64)
    num_classes: int = Field(7, ge=2, le=1000, description="expression classes (bounded: a typo must not allocate terabytes)")
    split_stage: int = Field(
        2, ge=1, description="backbone stage whose map is cut into local patches and feeds the multi-scale branch")

    # --- attention -------------------------------------------------------------------
    attention: str = Field("none", description="attention in the local branch (and the global one unless global_attention is set)")
    global_attention: Optional[str] = Field(None, description="attention of the global branch; None: same as `attention`")

    # --- global branch and scales --------------------------------------------------------
    global_branch: Literal["backbone", "multiscale"] = Field(
        "backbone",
        description="backbone: the backbone's own deeper stages (num_scales > 1: PhaNet-style hierarchical "
                    "attention over the last num_scales stages, softmax-gated); multiscale: MA-Net's "
                    "multi-scale stages (num_scales channel groups) built on the split-stage map")
    global_stage: Optional[int] = Field(
        None, ge=1, description="deepest stage the global branch reads (backbone kind); None: the deepest built")
    num_scales: int = Field(1, ge=1, le=8)
    multiscale_bidirectional: bool = Field(
        True, description="MA-Net 2023 code: the second cascade runs 4->1; False: the 2021 upload, both 1->4")
    multiscale_blocks: int = Field(2, ge=1, le=4, description="blocks per stage of the multi-scale branch")

    # --- local branch --------------------------------------------------------------------
    num_patches: int = Field(0, description="0 (no local branch), or a square grid: 4, 9, 16, 25 ...")
    patch_split: Literal["even", "ceil", "ceil_official"] = Field(
        "even", description="even: cells differ by at most one row; ceil: ceil(H/g) cells, the last takes the rest (SCAN's 6-6-6-6-4); "
                            "ceil_official: ceil, with the bottom strip's cells cut along rows as the official SCAN-CCI code "
                            "does (to reproduce its published checkpoints)")
    local_kind: Literal["attention", "deep"] = Field(
        "attention", description="attention: attention + pooling per patch (SCAN); deep: a copy of the deeper stages with attention in every block (MA-Net)")
    local_shared: bool = Field(False, description="one local module shared by all patches")
    local_aggregation: Literal["stitch", "max", "mean", "weighted"] = Field(
        "mean",
        description="stitch: patches stitched back spatially then pooled (MA-Net); max: element-wise max of pooled "
                    "features (SCAN); mean: ensemble mean of per-patch classifiers; weighted: ensemble weighted by a "
                    "non-local attention network's region scores (LNLAttenNet)")
    local_blocks: int = Field(2, ge=1, le=4, description="blocks per stage of a deep local branch")
    unet_fusion: bool = Field(
        False, description="LNLAttenNet-style U-Net step: the deepest map is upsampled and merged into the split map before patching")

    # --- context, pose, heads, fusion -----------------------------------------------------
    context_branch: bool = Field(False, description="SCAN-CCI's CCI: ECA on the stage after the split, 2x2 regions, MLP classifiers")
    context_hidden: int = Field(256, ge=8, le=8192)
    context_shared: bool = Field(True, description="one MLP for the 4 regions (as the SCAN-CCI code does)")
    pose_head: bool = False
    num_pose_classes: Optional[int] = Field(None, ge=2, le=1000)
    head: Literal["separate", "concat_l2"] = Field(
        "separate", description="separate: one classifier per branch; concat_l2: global and local features concatenated, L2-normalised, one classifier (SCAN)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    fusion: Literal["weighted", "mean"] = Field("mean", description="how branch logits are fused into the prediction")
    init: Literal["default", "official"] = Field(
        "default", description="default: PyTorch/timm init; official: kaiming-normal fan-out in the convolutions outside "
                               "the backbone trunk and CBAM's spatial BN momentum 0.01, as the official MA-Net code")

    # --- branch weights (fixed loss weighting and weighted fusion) ------------------------
    global_weight: float = Field(1.0, ge=0.0)
    local_weight: float = Field(1.0, ge=0.0)
    context_weight: float = Field(1.0, ge=0.0)
    scale_weight: float = Field(1.0, ge=0.0, description="weight of each auxiliary per-scale classifier")
    pose_weight: float = Field(1.0, ge=0.0)

    @field_validator("attention", "global_attention")
    @classmethod
    def _known_attention(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else check_attention(v)

    @field_validator("num_patches")
    @classmethod
    def _square_grid(cls, v: int) -> int:
        g = int(round(v ** 0.5))
        if v < 0 or g * g != v:
            raise UserError(f"num_patches={v} is not a square grid (valid: 0, 4, 9, 16, 25, ...)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        if self.backbone != "fercnn":
            given = [f"{k}={getattr(self, k)}" for k in ("fercnn_width", "fercnn_depth") if getattr(self, k) is not None]
            if given:
                raise UserError(f"{', '.join(given)} applies to backbone 'fercnn' only, not {self.backbone!r} "
                                "(a timm backbone's width and depth are its name: resnet10t, lcnet_050, ...)")
        if self.pretrained is not None or self.pretrained_file is not None:
            from .pretrained import resolve

            if self.pretrained_path is not None:
                raise UserError(f"pretrained_path={self.pretrained_path!r} and pretrained/pretrained_file both load "
                                "backbone weights: give one (pretrained_path: a state dict loaded after the build; "
                                "pretrained, pretrained_file: timm's weights)")
            resolve(self.backbone, self.pretrained, self.pretrained_file)
        if self.pose_head and not self.num_pose_classes:
            raise UserError("pose_head is true but num_pose_classes is not set (need >= 2 pose classes)")
        if self.head == "concat_l2" and self.num_patches == 0:
            raise UserError("head='concat_l2' concatenates global and local features: it needs num_patches > 0")
        if self.head == "concat_l2" and self.local_aggregation in ("mean", "weighted"):
            raise UserError(
                f"head='concat_l2' needs a feature-level local aggregation (stitch or max), got {self.local_aggregation!r}")
        if self.global_branch == "multiscale" and self.global_stage is not None:
            raise UserError("global_stage applies to global_branch='backbone' only (multiscale reads the split stage)")
        return self

    @property
    def backbone_kwargs(self) -> dict:
        """The architecture knobs passed to the backbone's builder (fercnn's width and depth)."""
        if self.backbone != "fercnn":
            return {}
        from .fercnn import DEFAULT_DEPTH, DEFAULT_WIDTH

        return {"width": self.fercnn_width or DEFAULT_WIDTH, "depth": self.fercnn_depth or DEFAULT_DEPTH}

    @property
    def grid(self) -> int:
        return int(round(self.num_patches ** 0.5))

    @property
    def resolved_global_attention(self) -> str:
        return self.global_attention if self.global_attention is not None else self.attention
