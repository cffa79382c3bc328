"""The reference NMS lives in the contract (taoflow.contract.nms), which the package builder and both backends share;
this name stays for the native trainer's evaluate and inference."""

from ...contract.nms import (NMS_BLOCK, NMS_ROW, eval_predictions, greedy_nms, iou_matrix, nms_plugin,  # noqa: F401
                             parse_nms_output, valid_rows)
