#pragma once

// Everything moeprune offers, in one include.
#include <moeprune/checkpoint.h>
#include <moeprune/data/image_dataset.h>
#include <moeprune/data/readers.h>
#include <moeprune/ensemble_router.h>
#include <moeprune/expert_bank.h>
#include <moeprune/expert_choice_router.h>
#include <moeprune/functional/aux_losses.h>
#include <moeprune/functional/routing.h>
#include <moeprune/hf_checkpoint.h>
#include <moeprune/hf_pruning.h>
#include <moeprune/moe_layer.h>
#include <moeprune/ops.h>
#include <moeprune/progress_bar.h>
#include <moeprune/pruning/builtin_criteria.h>
#include <moeprune/pruning/criterion.h>
#include <moeprune/pruning/pruning_plan.h>
#include <moeprune/router.h>
#include <moeprune/routing_plan.h>
#include <moeprune/safetensors.h>
#include <moeprune/top_k_router.h>
#include <moeprune/trainer.h>
#include <moeprune/version.h>
#include <moeprune/vision_transformer.h>
