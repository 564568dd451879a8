"""Utilities (Dassl ``dassl.utils`` names): files, logging, registries, checkpoints, meters, errors."""
from .comm import (
    all_gather_object,
    all_reduce_mean,
    all_reduce_min,
    barrier,
    broadcast_object,
    cleanup_distributed,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from .errors import MissingFileError, NonFiniteLossError, UserError
from .locks import OUTPUT_DIR_LOCK, DirectoryInUseError, OutputDirLock, locked_directory
from .logger import Logger, setup_logger
from .meters import AverageMeter, MetricMeter
from .registry import Registry, RegistryLookupError, check_availability, get_most_similar_str_to_a_from_b
from .tools import (
    atomic_write_text,
    check_isfile,
    collect_env_info,
    listdir_nohidden,
    mkdir_if_missing,
    read_image,
    read_json,
    remove_stale_temp_files,
    set_random_seed,
    tolist_if_not,
    write_json,
)
from .torchtools import (
    atomic_torch_save,
    count_num_param,
    get_rng_state,
    load_checkpoint,
    load_pretrained_weights,
    read_checkpoint_meta,
    restore_from_checkpoint,
    resume_from_checkpoint,
    save_checkpoint,
    set_rng_state,
)
