from setuptools import find_packages, setup

package_name = "edge_vlm_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="edge_vlm ROS 2 adapter: QoS, parameters, msg<->numpy, bag player, local runner, demo",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # installed to lib/edge_vlm_ros/ (setup.cfg) so `ros2 run edge_vlm_ros edge_vlm_play` works
            "edge_vlm_play = edge_vlm_ros.player:main",
            "edge_vlm_record = edge_vlm_ros.recorder:main",
            "edge_vlm_run = edge_vlm_ros.runner:main",
            "edge_vlm_demo = edge_vlm_ros.demo:main",
            # live sources (see README "Live cameras")
            "edge_vlm_camera_dv = edge_vlm_ros.camera_dv:main",
            "edge_vlm_camera_rgb = edge_vlm_ros.camera_rgb:main",
            "edge_vlm_camera_metavision = edge_vlm_ros.camera_metavision:main",
        ],
    },
)
